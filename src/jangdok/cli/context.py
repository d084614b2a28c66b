"""What every command shares: exit statuses, errors, the parser's types, and the context a
command runs in (its arguments, its console, the cache it works on)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from ..cache import Cache
from ..console import Console
from ..location import is_reserved
from ..stores import ObjectInfo

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PROBLEMS, EXIT_MISSING = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: stopped by the signal
PROBLEMS = ("damaged", "untrusted", "unsupported", "foreign")
"""Verdicts ``verify`` counts as problems found."""
BIG_TRANSFER = 32 * 1024 * 1024
"""Transfers from this size on show a progress bar."""
MANY_KEYS = 50
"""Commands over this many entries show a progress bar."""

# What an error is called in the JSON document a script reads, by exit status.
ERROR_TYPES = {EXIT_ERROR: "CommandError", EXIT_USAGE: "UsageError", EXIT_PROBLEMS: "ProblemsFound",
               EXIT_MISSING: "MissingEntry", EXIT_INTERRUPTED: "Interrupted", EXIT_TERMINATED: "Terminated"}


class Failure(Exception):
    """A command's own failure: a message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class UsageError(Exception):
    """A command line argparse refuses: its message, and the usage of the command it is for."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print and exit: --json needs a document too
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


def tcp_port(text: str) -> int:
    port = int(text) if text.strip().isdigit() else 0
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} is not a TCP port (1 to 65535)")
    return port


def option(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError, keeping its message for the user."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parsed.__name__ = parse.__name__
    return parsed


def as_json(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2, default=str)


def json_pieces(document: Any, indent: str = "") -> Iterator[str]:
    """The text of :func:`as_json` (the same characters), piece by piece: an iterator, as the
    document or as a value of it (a dictionary, whose keys are strings here), is written as a
    list, item by item as it yields them, so a listing of any length is never held."""
    inner = indent + "  "
    if isinstance(document, dict) and any(isinstance(value, Iterator) for value in document.values()):
        for number, (name, value) in enumerate(document.items()):
            yield f"{',' if number else '{'}\n{inner}{json.dumps(str(name), ensure_ascii=False)}: "
            yield from json_pieces(value, inner)
        yield f"\n{indent}}}"
    elif isinstance(document, Iterator):
        empty = True
        for item in document:
            text = as_json(item).replace("\n", "\n" + inner)
            yield f"{'[' if empty else ','}\n{inner}{text}"
            empty = False
        yield "[]" if empty else f"\n{indent}]"
    else:
        yield as_json(document).replace("\n", "\n" + indent)


class Context:
    """``cache``: the cache to work on, if not the one the arguments name (a benchmark's, whose
    requests it counts)."""

    def __init__(self, args: argparse.Namespace, console: Console, cache: Cache | None = None) -> None:
        self.args = args
        self.console = console
        self.emitted = False
        self._cache = cache

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            # An inspection tool must show the cache asked for, never quietly a fallback folder.
            self._cache = Cache(self.args.cache, fallback=False) if self.args.cache else Cache(fallback=False)
        return self._cache

    def emit(self, document: Any) -> None:
        """The command's result for scripts: one JSON document on stdout. Iterators in it are
        written as lists as they yield (see :func:`json_pieces`)."""
        self.emitted = True  # even if it fails midway: a second document would not help a reader
        out = self.console.out
        for piece in json_pieces(document):
            out.write(piece)
        out.write("\n")

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()



def listed(cache: Cache, prefix: str = "") -> Iterator[ObjectInfo]:
    """The cache's entries under ``prefix`` as the store lists them, a page at a time (the
    reserved folder left out)."""
    return (item for item in cache.store.list(prefix) if not is_reserved(item.key))


def plural(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"



def confirmed(ctx: Context, question: str) -> bool:
    """Whether the user agreed (``--yes`` agrees for them). Without a terminal to ask on, a
    usage error: a script must say ``--yes``."""
    if ctx.args.yes:
        return True
    if not sys.stdin.isatty():
        raise Failure(f"{question} Refusing without confirmation: pass --yes", EXIT_USAGE)
    ctx.console.problem(f"{question} [y/N] ")
    return sys.stdin.readline().strip().lower() in ("y", "yes")

