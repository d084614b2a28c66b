"""Where main.py extracts labels when not in its own process: a process pool on this machine
(``--workers N``) or a Dask cluster (``--scheduler ADDRESS``).

Each engine runs ``work(job, shared)`` for every job, several at a time, and yields the results
in the jobs' order (so the program's lines come in the order a single process prints them).
``shared`` (the cache) travels once per worker: a pool process receives it when it starts,
a Dask worker holds one copy for the run. ``work`` must be importable by its module's name
there (a Dask worker cannot import a script's ``__main__``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from jangdok.console import Interrupts

__all__ = ["START_METHOD", "ClusterUnavailable", "on_cluster", "on_processes", "scheduler_address"]

J = TypeVar("J")
R = TypeVar("R")

START_METHOD: str | None = None
"""multiprocessing's start method for the pool; ``None``: the platform's default (fork on Linux
before Python 3.14, forkserver from 3.14, spawn on macOS and Windows)."""


class ClusterUnavailable(Exception):
    """Dask is not installed, or its scheduler cannot be reached."""


def scheduler_address(given: str | None, workers: int | None) -> str | None:
    """The Dask scheduler to use: the one ``given`` (--scheduler), else Dask's own variable,
    unless ``workers`` (--workers) says to stay on this machine. Dask's configuration files are
    not read, so a run without a scheduler never imports Dask."""
    address = given or (None if workers else os.environ.get("DASK_SCHEDULER_ADDRESS") or None)
    if address is not None and importlib.util.find_spec("distributed") is None:
        where = "--scheduler" if given else "DASK_SCHEDULER_ADDRESS"
        raise ClusterUnavailable(f"{where} needs Dask's distributed scheduler: pip install 'jangdok[cluster]' "
                                 "(or unset DASK_SCHEDULER_ADDRESS, or pass --workers N, to run on this machine)")
    return address


def process_count(workers: int | None, jobs: int) -> int:
    """``workers`` (--workers), or one process per core this process may use; never more than
    the jobs (one job: 1, done in the main process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(workers or cores, jobs))


_work: Callable[[Any, Any], Any] | None = None
_shared: Any = None


def _start_pool_process(work: Callable[[Any, Any], Any], shared: Any) -> None:
    # The terminal's Ctrl-C reaches every process of the group: the main process acts on it and
    # stops the pool with SIGTERM, which ends an idle process at once (see _in_pool).
    global _work, _shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _work, _shared = work, shared


def _in_pool(job: Any) -> Any:
    # Stopped inside a job, the process unwinds first (the label's lease released, a
    # half-written entry removed), then ends without going back for more work.
    assert _work is not None
    with Interrupts():
        try:
            return _work(job, _shared)
        except KeyboardInterrupt:
            os._exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def on_processes(count: int, work: Callable[[J, Any], R], shared: Any, jobs: list[J]) -> Iterator[Iterator[R]]:
    """The jobs' results, in order, from ``count`` processes of this machine. Leaving early
    (an error, Ctrl-C) stops the processes: each unwinds the job it is in, then ends."""
    pool = multiprocessing.get_context(START_METHOD).Pool(count, _start_pool_process, (work, shared))
    try:
        yield pool.imap(_in_pool, jobs)
        pool.close()
    except BaseException:
        pool.terminate()  # returns once every process has ended
        raise
    finally:
        pool.join()


@contextlib.contextmanager
def on_cluster(address: str, work: Callable[[J, Any], R], shared: Any, jobs: list[J],
               started: Callable[[dict[str, int]], None]) -> Iterator[Iterator[R]]:
    """The jobs' results, in order, from the Dask cluster at ``address``; ``started`` is told
    its workers (address: threads) once it is reached. Leaving early cancels the jobs not
    started; a job running on a worker finishes there (Dask cannot stop it)."""
    from distributed import Client

    try:
        client = Client(address, set_as_default=False)
    except OSError as exc:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        started(client.nthreads())
        held = None if shared is None else client.scatter(shared, broadcast=True, hash=False)
        futures = [client.submit(work, job, held, pure=False) for job in jobs]
        yield (future.result() for future in futures)
