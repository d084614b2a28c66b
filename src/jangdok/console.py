"""What the command line shows: sizes and ages for people, colours on terminals only, progress
bars on long work, and parsing of the sizes and durations people type.

Kept apart from the commands so that every command renders alike; only apps (the CLI) use it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, Any

from .settings import parse_size

__all__ = ["Console", "human_size", "human_age", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COLOURS = {"ok": "32", "note": "33", "fail": "31", "dim": "2", "bold": "1"}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number with s, m, h, d or w, e.g. 30d or 12h")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _UNITS[unit]


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

    def paint(self, text: str, style: str) -> str:
        return f"\033[{_COLOURS[style]}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def problem(self, text: str) -> None:
        print(text, file=self.err)

    def progress(self, description: str, total: int | None, unit: str = "it", threshold: int = 0) -> Progress:
        return Progress(self, description, total, unit, threshold)


class Progress:
    """A progress bar (tqdm) shown only on a terminal and only for work of ``threshold`` or more;
    the total may come with the first update (``to(done, total)``)."""

    def __init__(self, console: Console, description: str, total: int | None, unit: str, threshold: int) -> None:
        self._console = console
        self._description = description
        self._total = total
        self._unit = unit
        self._threshold = threshold
        self._bar: Any = None

    def _shown(self) -> Any:
        if self._bar is None and self._console.bars and self._total is not None and self._total >= self._threshold:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=self._description, unit=self._unit,
                             unit_scale=self._unit == "B", leave=False, file=self._console.err)
        return self._bar

    def to(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self._total = total
        bar = self._shown()
        if bar is not None:
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
