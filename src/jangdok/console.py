"""What the command line shows: sizes and ages for people, colours on terminals only, progress
bars on long work, and parsing of the sizes and durations people type; and how an app stops
on Ctrl-C and SIGTERM.

Kept apart from the commands so that every command renders alike; only apps (the CLI,
``main.py``) use it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import IO, Any

from . import settings

__all__ = ["Console", "Interrupts", "StopSignals", "human_size", "human_age", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BARE_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*$")
_COLOURS = {"ok": "32", "note": "33", "fail": "31", "dim": "2", "bold": "1"}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m`` or ``45s``. The unit is required: a bare ``30``
    read as seconds would make ``prune --older-than 30`` remove nearly everything."""
    bare = _BARE_NUMBER.match(text)
    if bare:
        raise ValueError(f"{text!r} has no unit; write e.g. {bare.group(1)}d for days, or {bare.group(1)}s for seconds")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number with s, m, h, d or w, e.g. 30d or 12h")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_size(text: str) -> int:
    """Bytes in ``500MB``, ``10GB``, ``2GiB`` or ``300B``. The unit is required: a bare ``5``
    read as bytes would make ``prune --max-size 5`` remove every entry."""
    bare = _BARE_NUMBER.match(text)
    if bare:
        raise ValueError(f"{text!r} has no unit; write e.g. {bare.group(1)}GB, or {bare.group(1)}B for bytes")
    try:
        return settings.parse_size(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write e.g. 500MB, 10GB or 2GiB") from None


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for limit, unit in ((60, "s"), (3600, "m"), (86400, "h"), (float("inf"), "d")):
        if seconds < limit:
            divisor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
            return f"{seconds / divisor:.0f}{unit}"
    raise AssertionError("unreachable")


class Console:
    """Output for one command: plain text, colours when writing to a terminal (and NO_COLOR is
    unset), progress bars on stderr when it is a terminal."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = self.out.isatty() and "NO_COLOR" not in os.environ
        self.bars = self.err.isatty()
        self.bar: Any = None
        """The progress bar shown now, if any: lines written meanwhile go above it."""

    def paint(self, text: str, style: str) -> str:
        return f"\033[{_COLOURS[style]}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        if self.bar is not None:  # a command writing as it works (ls -l): the bar is drawn again below
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out)

    def problem(self, text: str) -> None:
        print(text, file=self.err)

    def progress(self, description: str, total: int | None, unit: str = "it", threshold: int = 0) -> Progress:
        return Progress(self, description, total, unit, threshold)


class Progress:
    """A progress bar (tqdm) shown only on a terminal and only for work of ``threshold`` or more;
    the total may come with an update (``to(done, total)``). Until it does, ``to`` shows a bar
    that counts, once the count reaches ``threshold`` (a listing that streams has no total)."""

    def __init__(self, console: Console, description: str, total: int | None, unit: str, threshold: int) -> None:
        self._console = console
        self._description = description
        self._total = total
        self._unit = unit
        self._threshold = threshold
        self._bar: Any = None

    def _shown(self, done: int | None = None) -> Any:
        size = self._total if self._total is not None else done
        if self._bar is None and self._console.bars and size is not None and size >= self._threshold:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=self._description, unit=self._unit,
                             unit_scale=self._unit == "B", leave=False, file=self._console.err)
            self._console.bar = self._bar
        return self._bar

    def to(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self._total = total
        bar = self._shown(done)
        if bar is not None:
            if bar.total != self._total:
                bar.total = self._total
            bar.update(done - bar.n)

    def advance(self, count: int = 1) -> None:
        bar = self._shown()
        if bar is not None:
            bar.update(count)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()
            self._console.bar = None


class _Signals:
    """Handlers for some signals while the object is entered, the previous ones restored on exit.
    Only the main thread can set handlers: elsewhere this does nothing. A signal the process was
    told to ignore (``nohup``, a shell's background job ignoring Ctrl-C) stays ignored."""

    names: tuple[str, ...] = ()

    def __init__(self, *, then_ignore_ctrl_c: bool = False) -> None:
        self.received: int | None = None
        """The first signal received, if any."""
        self._previous: dict[int, Any] = {}
        self._then_ignore_ctrl_c = then_ignore_ctrl_c

    def _handle(self, number: int, frame: object) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        for name in self.names:
            number = getattr(signal, name, None)  # SIGHUP is POSIX only
            if number is None:
                continue
            if signal.getsignal(number) is signal.SIG_IGN:
                continue
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            ignored = self._then_ignore_ctrl_c and number == signal.SIGINT
            signal.signal(number, signal.SIG_IGN if ignored else handler)
        self._previous.clear()


class Interrupts(_Signals):
    """Ctrl-C (SIGINT) and SIGTERM for an app: the first raises KeyboardInterrupt where the
    program is, so it unwinds through its cleanup (temporary files removed, uploads aborted);
    any later one while it unwinds is ignored, so a second Ctrl-C cannot break that cleanup
    into a traceback."""

    names = ("SIGINT", "SIGTERM")

    def _handle(self, number: int, frame: object) -> None:
        if self.received is None:
            self.received = number
            raise KeyboardInterrupt

    @property
    def status(self) -> int:
        """The exit status of a program stopped by the signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + (self.received or signal.SIGINT)

    def __enter__(self) -> Interrupts:
        return super().__enter__()


class StopSignals(_Signals):
    """SIGINT, SIGTERM and SIGHUP while an app owns a child process: each only notes that the
    app should stop (call the object to ask). The app then stops its child in order at its next
    check; an exception raised mid-step could instead leave the child running, in a session of
    its own where no terminal signal reaches it."""

    names = ("SIGINT", "SIGTERM", "SIGHUP")

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, number: int, frame: object) -> None:
        self.received = self.received or number

    def __enter__(self) -> StopSignals:
        return super().__enter__()
