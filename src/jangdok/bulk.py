"""Work over every entry of a cache, at any count: memory that does not grow with the entries,
per-entry requests a bounded number at a time, removals in batches.

- :func:`in_order`: a function applied to a stream of items by a bounded pool of threads,
  made when the work starts and joined before it ends, with the results in the items' order.
- :class:`SortedListing`: a listing sorted in bounded memory. A listing is not in key order
  (a folder lists in the file system's order, and SeaweedFS lists ``a/x`` before ``a-b``,
  against S3's byte order), and sorting it in memory would hold every entry: runs of
  :data:`RUN` items are sorted in memory and spilled to anonymous temporary files, then merged.
- :func:`remove`: each listed object removed in the version listed, 1000 in a request where
  the store batches deletes pinned to versions, else one versioned delete per key,
  concurrently.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import tempfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import IO, Any, TypeVar

from .stores import ObjectInfo, Store

__all__ = ["in_order", "SortedListing", "remove", "batches", "BATCH", "RUN"]

T = TypeVar("T")
R = TypeVar("R")

BATCH = 1000
"""Objects per batch delete (S3 DeleteObjects' maximum), and per listing page."""
RUN = 4096
"""Items a :class:`SortedListing` holds in memory (about 340 bytes each) before it spills them."""
_CHUNK = 256  # items per pickle in a spilled run: what a merge holds of each run at a time
_FAN_IN = 16  # runs merged at once: at most _FAN_IN * _CHUNK items are held while merging


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def in_order(function: Callable[[T], R], items: Iterable[T], workers: int) -> Generator[R, None, None]:
    """``function(item)`` for each item, at most ``workers`` running at once, yielded in the
    order of ``items``. ``items`` is consumed in the caller's thread, a few ahead of the results
    (never all at once), so a listing can feed it as it pages. The threads are made at the first
    result and joined when the last one is taken, or when the iterator is closed: close it (or
    use ``contextlib.closing``) when stopping early. A failing call raises in the caller, once
    the calls already running have ended."""
    if workers <= 1:
        yield from map(function, items)
        return
    pending: deque[Future[R]] = deque()
    source = iter(items)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="jangdok")
    try:
        # Twice as many queued as running: a worker never waits for the caller to take a result.
        for item in itertools.islice(source, 2 * workers):
            pending.append(pool.submit(function, item))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(source, 1):
                pending.append(pool.submit(function, item))
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _packed(item: ObjectInfo) -> tuple[str, int, float, str]:
    return item.key, item.size, item.modified, item.version  # a tuple pickles ~20x faster


class SortedListing:
    """Listed objects, sorted by ``key`` (stable: equal keys keep the order they came in),
    holding at most about :data:`RUN` of them in memory however many there are.

    ``add`` or ``extend`` them, then iterate once; ``count`` says how many came. Use it as a
    context manager (or ``close`` it): the spilled runs live in anonymous temporary files,
    which the system removes once closed, even after a crash."""

    def __init__(self, key: Callable[[ObjectInfo], Any], reverse: bool = False) -> None:
        self._key = key
        self._reverse = reverse
        self.count = 0
        self._held: list[ObjectInfo] = []
        self._runs: list[tuple[int, IO[bytes]]] = []  # (level, file): levels never increase along the list

    def add(self, item: ObjectInfo) -> None:
        self._held.append(item)
        self.count += 1
        if len(self._held) >= RUN:
            self._runs.append((0, self._written(self._sort(self._held))))
            self._held = []  # before merging: never a run held and runs merged at once
            self._merge_down()

    def extend(self, items: Iterable[ObjectInfo]) -> None:
        for item in items:
            self.add(item)

    def _sort(self, items: list[ObjectInfo]) -> list[ObjectInfo]:
        items.sort(key=self._key, reverse=self._reverse)
        return items

    @staticmethod
    def _written(items: Iterable[ObjectInfo]) -> IO[bytes]:
        file = tempfile.TemporaryFile()
        for chunk in batches(items, _CHUNK):
            pickle.dump([_packed(item) for item in chunk], file, protocol=pickle.HIGHEST_PROTOCOL)
        file.seek(0)
        return file

    def _merge_down(self) -> None:
        """Like a counter in base _FAN_IN: _FAN_IN runs of one level become one of the next, so
        every item is rewritten once per level (log of the count), and the open files stay few."""
        while len(self._runs) >= _FAN_IN and len({level for level, _ in self._runs[-_FAN_IN:]}) == 1:
            merged = self._runs[-_FAN_IN:]
            del self._runs[-_FAN_IN:]
            self._runs.append((merged[0][0] + 1, self._written(self._merge([self._read(run) for _, run in merged]))))
            for _, run in merged:
                run.close()

    @staticmethod
    def _read(file: IO[bytes]) -> Iterator[ObjectInfo]:
        while True:
            try:
                chunk = pickle.load(file)  # our own file, in a folder only this user can read
            except EOFError:
                return
            yield from (ObjectInfo(*packed) for packed in chunk)

    def _merge(self, runs: list[Iterator[ObjectInfo]]) -> Iterator[ObjectInfo]:
        # heapq.merge takes equal items from the earlier run first: the sort stays stable.
        return heapq.merge(*runs, key=self._key, reverse=self._reverse)

    def __iter__(self) -> Iterator[ObjectInfo]:
        held, self._held = self._sort(self._held), []
        if not self._runs:
            return iter(held)
        return self._merge([*(self._read(run) for _, run in self._runs), iter(held)])

    def close(self) -> None:
        self._held = []
        for _, run in self._runs:
            run.close()
        self._runs = []

    def __enter__(self) -> SortedListing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def remove(store: Store, listed: Iterable[ObjectInfo], workers: int) -> Generator[tuple[ObjectInfo, bool], None, None]:
    """Remove each listed object if it is still the version listed, yielding ``(item,
    removed)`` in the order listed. ``listed`` is consumed as it comes (a listing can feed it).
    Where the store batches deletes pinned to versions (S3 DeleteObjects, if the server
    honours the pins), one request per :data:`BATCH` objects; else one versioned delete per
    object, ``workers`` at a time. Nothing is asked of the store for an empty listing."""
    source = iter(listed)
    first = next(source, None)
    if first is None:
        return
    source = itertools.chain((first,), source)
    if store.capabilities.conditional_batch_delete is True:  # unknown: one versioned delete at a time
        for batch in batches(source, BATCH):
            gone = set(store.delete_many(batch))
            for item in batch:
                yield item, item.key in gone
        return

    def delete(item: ObjectInfo) -> tuple[ObjectInfo, bool]:
        return item, store.delete(item.key, version=item.version)

    with closing(in_order(delete, source, workers)) as results:
        yield from results
