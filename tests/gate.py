"""A value that holds a process at a chosen moment, so a test can send it a real signal there.

A module of its own, light (standard library only), so the ``jangdok`` command run by a test
can unpickle a :class:`Gate` stored in a cache. In a process whose environment names a folder
in ``JANGDOK_TEST_GATE`` (never the test's own), pickling a gate:

1. creates ``pickling`` in that folder: the process is writing the value out;
2. registers a hook run at the process's exit, which creates ``exiting`` and then waits until
   the test opens the FIFO ``release`` there (a process shutting down, joining threads and
   closing connections, is held there as long as the test needs);
3. waits on the FIFO ``hold`` there, which the test never opens: only a signal gets it out.

Without that variable a gate pickles like any small value, so tests can store it.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

VARIABLE = "JANGDOK_TEST_GATE"


def _wait(fifo: Path) -> None:
    """Block until a writer opens and closes ``fifo`` (opening a FIFO to read waits for one)."""
    with open(fifo, "rb") as pipe:
        pipe.read()


def _at_exit(folder: Path) -> None:
    (folder / "exiting").touch()
    _wait(folder / "release")


class Gate:
    def __reduce__(self) -> tuple[type, tuple[()]]:
        folder = os.environ.get(VARIABLE)
        if folder:
            atexit.register(_at_exit, Path(folder))
            (Path(folder) / "pickling").touch()
            _wait(Path(folder) / "hold")
        return (Gate, ())


def prepare(folder: Path) -> Path:
    """Make the FIFOs a gate waits on, in ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("hold", "release"):
        os.mkfifo(folder / name)
    return folder
