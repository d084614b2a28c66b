"""Request bodies: values sent as they are, chunk by chunk, in parts of a multipart upload,
never joined into one copy; and the progress of what was sent."""

from __future__ import annotations

import bisect
import io
import itertools
import threading
from collections.abc import Callable, Iterator

from ..base import Chunks, iter_chunks

__all__ = ["ChunkFile", "Sent", "Helpers", "shutting_down", "split_into_parts"]


class ChunkFile(io.RawIOBase):
    """A seekable read-only file over byte chunks, so botocore can send (and re-send or
    checksum) a body that was never joined into one copy."""

    def __init__(self, chunks: list[memoryview], sent: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._chunks = chunks
        self._starts = list(itertools.accumulate((chunk.nbytes for chunk in chunks), initial=0))
        self._size = self._starts[-1]
        self._pos = 0
        self._sent = sent

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = min(max(0, base + offset), self._size)
        return self._pos

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        written = 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        while written < target.nbytes and index < len(self._chunks):
            chunk = self._chunks[index]
            piece = chunk[self._pos + written - self._starts[index] :][: target.nbytes - written]
            target[written : written + piece.nbytes] = piece
            written += piece.nbytes
            index += 1
        self._pos += written
        if self._sent is not None:
            self._sent(self._pos)
        return written


class Sent:
    """Bytes handed to the connection so far by all the parts of one write, reported to
    ``progress`` in the writing thread only (parts may go up in other threads). A retried part
    reads its body again from the start; the count only ever goes up."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._positions: dict[int, int] = {}
        self._reported = 0

    def part(self, number: int, report: bool = False) -> Callable[[int], None] | None:
        """The callback part ``number``'s body calls with its own position; with ``report``
        (a body sent by the writing thread itself) it reports at once."""
        if self._progress is None:
            return None

        def sent(position: int) -> None:
            with self._lock:
                self._positions[number] = max(position, self._positions.get(number, 0))
            if report:
                self.report()

        return sent

    def report(self) -> None:
        """Tell ``progress`` the bytes sent so far, if more than last time."""
        if self._progress is None:
            return
        with self._lock:
            total = sum(self._positions.values())
        if total > self._reported:
            self._reported = total
            self._progress(total)


def split_into_parts(data: Chunks, part_size: int) -> Iterator[list[memoryview]]:
    """Group chunks into parts of exactly ``part_size`` bytes (the last may be shorter)."""
    part: list[memoryview] = []
    filled = 0
    yielded = False
    for view in iter_chunks(data):
        while view.nbytes:
            piece = view[: part_size - filled]
            part.append(piece)
            filled += piece.nbytes
            view = view[piece.nbytes :]
            if filled == part_size:
                yield part
                part, filled, yielded = [], 0, True
    if part or not yielded:
        yield part


def shutting_down() -> bool:
    """Whether the interpreter is shutting down (its main thread stopped), where thread pools
    refuse work and Python 3.12 starts no thread: transfers then go on in the calling thread."""
    return not threading.main_thread().is_alive()


class Helpers:
    """The threads a process may add to its transfers beyond the callers' own: ``concurrency``
    in all, shared by every large read and write of one store, so a batch of ``concurrency``
    large entries does not multiply into ``concurrency`` squared requests. A transfer takes
    what is free (never waiting for more) and gives it back when it ends; with none free it
    goes on in its own thread alone, as it does once the interpreter is :func:`shutting_down`
    (in an atexit handler, or a thread working on after the main thread ended)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._free = limit

    def take(self, wanted: int) -> int:
        if shutting_down():
            return 0
        with self._lock:
            taken = max(0, min(wanted, self._free))
            self._free -= taken
            return taken

    def give(self, count: int) -> None:
        with self._lock:
            self._free += count

