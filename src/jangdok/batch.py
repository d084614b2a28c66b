"""Batches: many keys in one call, a bounded number of them in flight at once.

:meth:`Cache.get_many <jangdok.Cache.get_many>`, ``get_entries`` and ``put_many`` do for each
key exactly what the single calls do (:meth:`Entries.load <jangdok.entries.Entries.load>`,
:meth:`Entries.save <jangdok.entries.Entries.save>`: verified, counted and logged alike),
``concurrency`` keys at a time. On a real link each request waits 10-30 ms for its answer, so
a batch costs its longest chain of requests, not their sum.

The threads are made for one call and joined before it returns, and the calling thread is one
of them (a batch of one key makes none): no thread outlives the work, so a fork after a batch
copies no running thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .entries import Entries, Entry, EntryInfo
from .entry import Progress
from .errors import BatchError, InvalidKey, JangdokError

__all__ = ["run", "named", "load", "save", "settle"]

log = logging.getLogger("jangdok")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

# Errors a BatchError's message quotes; all of them are in its .errors.
_QUOTED_ERRORS = 3


def run(items: Sequence[K], work: Callable[[K], V], concurrency: int) -> tuple[dict[K, V], dict[K, JangdokError]]:
    """``work(item)`` for each item, at most ``concurrency`` at once: what each returned, and
    each one's :class:`JangdokError` (its own: the other items go on). Any other exception (a
    bug, ``MemoryError``, Ctrl-C in the calling thread) stops the batch: no item starts after
    it, and it is raised once every thread has finished the item it was on."""
    done: dict[K, V] = {}
    failed: dict[K, JangdokError] = {}
    lock = threading.Lock()
    stopped: list[BaseException] = []
    taken = 0

    def stop(exc: BaseException) -> None:
        with lock:
            stopped.append(exc)

    def take() -> int | None:
        nonlocal taken
        with lock:
            if stopped or taken >= len(items):
                return None
            taken += 1
            return taken - 1

    def work_through() -> None:
        while (index := take()) is not None:
            item = items[index]
            try:
                result = work(item)
            except JangdokError as exc:
                with lock:
                    failed[item] = exc
                continue
            except BaseException as exc:
                stop(exc)
                return
            with lock:
                done[item] = result

    threads: list[threading.Thread] = []
    try:
        for number in range(1, min(concurrency, len(items))):
            thread = threading.Thread(target=work_through, name=f"jangdok batch {number}")
            try:
                thread.start()
            except RuntimeError as exc:  # no more threads (a limit, interpreter shutdown): fewer will do
                log.debug("batch of %d runs on %d threads: %s", len(items), number, exc)
                break
            threads.append(thread)
        work_through()
    except BaseException as exc:
        stop(exc)
    finally:
        for thread in threads:
            while thread.is_alive():
                try:
                    thread.join()
                except BaseException as exc:  # a thread must never outlive the call: join it anyway
                    stop(exc)
    if stopped:
        raise stopped[0]
    return done, failed


def named(keys: Iterable[str], check: Callable[[str], str]) -> dict[str, str]:
    """Each key as given, and the key it names (checked and normalised by ``check``), in the
    order given. All are checked before any request: one bad key fails the call at once."""
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"expected an iterable of keys, got the single key {keys!r}; pass [{keys!r}]")
    return {key: check(key) for key in keys}


class _Tally:
    """One ``progress(done, total)`` over a whole batch, in bytes. ``total`` is the size of the
    entries begun so far (a size is known once its transfer starts), so it grows until the
    last key has begun. Called by one thread at a time."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._each: dict[str, tuple[int, int]] = {}
        self._done = 0
        self._total = 0

    def follow(self, key: str) -> Progress | None:
        """The progress callback for one key's transfer."""
        if self._progress is None:
            return None
        return lambda done, total: self._set(key, done, total)

    def finish(self, key: str, size: int) -> None:
        """The key is done: ``size`` bytes (0 for a miss or a failure, which count for nothing)."""
        if self._progress is not None:
            self._set(key, size, size)

    def _set(self, key: str, done: int, total: int) -> None:
        assert self._progress is not None
        with self._lock:
            before = self._each.get(key, (0, 0))
            self._each[key] = (done, total)
            self._done += done - before[0]
            self._total += total - before[1]
            self._progress(self._done, self._total)


def load(entries: Entries, keys: Mapping[str, str], concurrency: int,
         progress: Progress | None) -> tuple[dict[str, Entry], dict[str, JangdokError]]:
    """The entries found for ``keys`` (as given: normalised), and each failed key's error,
    both by the keys as given, in their order. A key named twice is read once."""
    tally = _Tally(progress)

    def one(key: str) -> Entry | None:
        size = 0
        try:
            found = entries.load(key, tally.follow(key))
            size = 0 if found is None else found.info.size
            return found
        finally:
            tally.finish(key, size)

    found, failed = run(list(dict.fromkeys(keys.values())), one, concurrency)
    return ({given: entry for given, key in keys.items() if (entry := found.get(key)) is not None},
            {given: failed[key] for given, key in keys.items() if key in failed})


def save(entries: Entries, keys: Mapping[str, str], values: Mapping[str, Any], metadata: Mapping[str, Any] | None,
         ttl: float | None, concurrency: int,
         progress: Progress | None) -> tuple[dict[str, EntryInfo], dict[str, JangdokError]]:
    """Each value of ``values`` saved under its key (``keys``: as given, normalised); what each
    save returned, and each failed key's error, by the keys as given. Two keys given that name
    one entry are refused (``InvalidKey``) before anything is written: which value would win?"""
    given_as: dict[str, str] = {}
    for given, key in keys.items():
        other = given_as.setdefault(key, given)
        if other != given:
            raise InvalidKey(f"keys {other!r} and {given!r} name one entry ({key!r}); give it one value")
    tally = _Tally(progress)

    def one(key: str) -> EntryInfo:
        size = 0
        try:
            info = entries.save(key, values[given_as[key]], metadata, tally.follow(key), ttl)
            size = info.size
            return info
        finally:
            tally.finish(key, size)

    saved, failed = run(list(given_as), one, concurrency)
    return ({given: saved[key] for given, key in keys.items() if key in saved},
            {given: failed[key] for given, key in keys.items() if key in failed})


def settle(results: dict[str, T], errors: dict[str, JangdokError], doing: str, count: int) -> dict[str, T]:
    """``results``, or a :class:`BatchError` carrying them and ``errors`` if any key failed."""
    if not errors:
        return results
    quoted = "; ".join(f"{key!r}: {type(exc).__name__}: {exc}" for key, exc in list(errors.items())[:_QUOTED_ERRORS])
    more = f"; and {len(errors) - _QUOTED_ERRORS} more" if len(errors) > _QUOTED_ERRORS else ""
    raise BatchError(f"{doing} failed for {len(errors)} of {count} keys ({quoted}{more}); the other keys' "
                     "results are in the error's .results, each failed key's error in its .errors", results, errors)
