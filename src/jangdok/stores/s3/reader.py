"""Reading objects: one GET for what fits in a part, parallel ranged GETs for the rest.

A whole-object read asks first for one part (``part_size`` bytes); its answer gives the
object's size and version (ETag). What an object holds beyond that first part is fetched, when
a caller asks to :meth:`ObjectReader.fill` a buffer with it, in ranges of ``part_size`` bytes,
``concurrency`` at a time, each written straight into its place in the caller's buffer. Every
request after the first is pinned to the first's ETag (``If-Match``), so the bytes delivered
always come from one version: a concurrent overwrite makes the read fail with
:class:`~jangdok.errors.ObjectChanged` (read it again), never a mix. A range whose transfer
breaks is resumed alone, from where it broke.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from ...errors import ObjectChanged, StoreUnavailable
from ..base import ObjectInfo, Reader
from .translate import MISSING_CODES, ShortBody, error_code

if TYPE_CHECKING:
    from ...retry import RetryBudget
    from .store import S3Store

__all__ = ["ObjectReader", "absent_header", "range_start_and_total", "BODY_READ_SIZE", "ONE_CONNECTION_SUFFICES"]

log = logging.getLogger("jangdok")

# A body read that breaks loses what it had read, so reads stay small enough that a resumed
# transfer repeats little, and large enough to cost nothing per byte. Where a body is not read
# from its socket directly (see _socket_side), urllib3 reads each into a bytes object of its own
# before copying it over, one per range in flight: 16 ranges of 1 MiB reads added a third of a
# 48 MB payload to the peak memory of a load.
BODY_READ_SIZE = 256 * 1024
# Below this, a range's round trip costs more than its bytes save by going in parallel (20 ms
# is 0.5 MB at 25 MB/s per connection; 10-30 ms is 1-3 MB at S3's 85-90 MB/s).
_SMALLEST_RANGE = 2 * 1024 * 1024
ONE_CONNECTION_SUFFICES = 200e6
"""Bytes per second past which one connection is read alone: more than one S3 connection
gives (85-90 MB/s), and what a server on the same machine or a fast LAN gives, where the
client's CPU, not the link, is the limit and ranges only add requests (measured here on
loopback: a 48.6 MB load took 117 ms alone, 172 ms in 16 ranges)."""
_PROBE_BYTES = 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+)")
# Headers every GET answer must have (as botocore names their fields): a reader cannot say
# what it holds without them.
_NEEDED = (("Content-Length", "ContentLength"), ("Last-Modified", "LastModified"))


def _socket_side(body: Any) -> tuple[http.client.HTTPResponse, Callable[[], None]] | None:
    """For a body that is botocore's over urllib3's over http.client's (every boto3 client's),
    http.client's response, whose ``readinto`` reads from the socket straight into the caller's
    buffer, and urllib3's ``release_conn``. urllib3's own ``readinto`` reads into a bytes object and
    copies it: on loopback that copy was a third of a 48 MB load's time. Only where urllib3 would
    not decode the bytes (botocore never asks it to); ``None`` for any other body."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    release = getattr(raw, "release_conn", None)
    if not isinstance(fp, http.client.HTTPResponse) or getattr(raw, "decode_content", True) or not callable(release):
        return None
    return fp, release


def absent_header(response: dict[str, Any]) -> str | None:
    """The first header S3 always sends with an object (its size, its time) that ``response``
    lacks: a proxy rewriting answers, or not S3 at all; ``None`` if none is missing."""
    return next((header for header, field in _NEEDED if field not in response), None)


def range_start_and_total(response: dict[str, Any]) -> tuple[int, int] | None:
    """Where a (ranged) GET response starts in the object, and the object's total size;
    ``None`` for a partial answer (206) that does not say (no Content-Range, or an unknown
    total), whose Content-Length is not the object's size."""
    match = _CONTENT_RANGE.match(response.get("ContentRange") or "")
    if match:
        return int(match.group(1)), int(match.group(2))
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 206:
        return None
    return 0, int(response["ContentLength"])


class _Stopped(Exception):
    """A range abandoned because another range of the same fill failed."""


class ObjectReader(Reader):
    """An object's bytes ``[start, stop)`` from a first GET's ``response`` (which may hold only
    the first part of them), fetching the rest as it is asked for.

    Resumed and further requests are pinned to the first response's ETag and must start
    exactly where asked, so the bytes delivered always come from one version of the object.
    """

    def __init__(self, store: S3Store, key: str, response: dict[str, Any], start: int,
                 stop: int | None = None) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._body = response["Body"]
        self._direct = _socket_side(self._body)
        self._budget = store.policy.budget()
        self._stopped: threading.Event | None = None
        missing = absent_header(response)
        located = None if missing else range_start_and_total(response)
        if located is None:
            self._body.close()
            raise StoreUnavailable(f"S3 error loading {store.path(key)}: the response has no "
                                   f"{missing or 'Content-Range with the object size'}; "
                                   "is a proxy rewriting responses between here and the endpoint?")
        begins, total = located
        if begins != start:
            self._body.close()
            raise StoreUnavailable(f"S3 error loading {store.path(key)}: asked for bytes from {start}, the server "
                                   f"answered from {begins} (it ignored the byte range); load it again")
        self.info = ObjectInfo(key, total, response["LastModified"].timestamp(), response.get("ETag") or "")
        self._pos = start
        self._end = max(start, total if stop is None else min(stop, total))
        self.size = self._end - start
        self._body_end = min(self._end, start + int(response["ContentLength"]))
        self._first = start
        self._opened = time.perf_counter()
        self._speed: float | None = None
        """Bytes per second the first response delivered (see :meth:`fill`)."""

    # -- reading in order -----------------------------------------------------------------

    def _drop_body(self, read_whole: bool = False) -> None:
        if self._body is not None:
            # As urllib3 does once http.client has read a response to its very end (a chunked
            # one's last chunk too): the connection goes back to the pool, so close() keeps it.
            if read_whole and self._direct is not None and self._direct[0].isclosed():
                self._direct[1]()
            self._body.close()
            self._body = None

    def _request(self, start: int, stop: int, budget: RetryBudget | None = None,
                 stopped: threading.Event | None = None) -> dict[str, Any]:
        """A GET of bytes ``[start, stop)`` of the version this reader reads, retried on
        ``budget`` (default: this reader's) until ``stopped`` (default: this reader's) is set;
        ObjectChanged if the object was replaced or removed since."""
        path = self._store.path(self._key)
        version = self.info.version
        if not version:
            raise StoreUnavailable(f"S3 error loading {path}: the server gave no ETag, so the rest of the object "
                                   "cannot be pinned to the version read so far; load it again")

        stopped = stopped or self._stopped

        def get() -> dict[str, Any]:
            if stopped is not None and stopped.is_set():
                raise _Stopped
            try:
                return self._store.get_object(self._key, start, stop, if_match=version)
            except bce.ClientError as exc:
                code, status = error_code(exc)
                if status == 412 or code in MISSING_CODES:
                    what = "replaced" if status == 412 else "removed"
                    raise ObjectChanged(f"S3 error loading {path}: the object was {what} while it was being read; "
                                        "load it again") from exc
                raise

        response = self._store.call("loading", self._key, get, budget or self._budget)
        if (response.get("ETag") or "") != version:  # a server that ignores If-Match
            response["Body"].close()
            raise ObjectChanged(f"S3 error loading {path}: the object was replaced while it was being read "
                                "(the server ignored If-Match); load it again")
        return response

    def _open_rest(self) -> None:
        """A GET of everything from where this reader stands: a resumed transfer, or the part
        after the first response's."""
        log.debug("reading %s from byte %d", self._store.path(self._key), self._pos)
        response = self._request(self._pos, self._end)
        located = range_start_and_total(response)
        if located is None or located[0] != self._pos:
            response["Body"].close()
            raise StoreUnavailable(f"S3 error loading {self._store.path(self._key)}: the server ignored the byte "
                                   "range of a resumed transfer; load it again")
        self._body = response["Body"]
        self._direct = _socket_side(self._body)
        self._body_end = self._end

    def _read_some(self, target: memoryview) -> int:
        if self._stopped is not None and self._stopped.is_set():
            raise _Stopped
        if self._body is None:
            self._open_rest()
        view = target[: min(BODY_READ_SIZE, self._body_end - self._pos)]
        direct = self._direct
        try:  # straight from the socket, no copy
            count = self._body.readinto(view) if direct is None else direct[0].readinto(view)
        except BaseException as exc:
            self._drop_body()
            if direct is not None and isinstance(exc, (OSError, http.client.HTTPException)):
                # What urllib3 would have called a broken connection: resumed like one.
                raise ShortBody(f"connection broke at byte {self._pos} of {self._body_end}: {exc}") from exc
            raise
        if not count:
            self._drop_body()
            raise ShortBody(f"connection closed at byte {self._pos} of {self._body_end}")
        if self._pos + count == self._body_end:
            self._drop_body(read_whole=True)  # its bytes are all read: the next ones need a request of their own
        return count

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")[: self._end - self._pos]
        if not target.nbytes:
            return 0
        count = self._store.call("loading", self._key, lambda: self._read_some(target), self._budget)
        self._budget.progressed()
        self._pos += count
        return count

    def _read_exactly(self, target: memoryview, arrived: Callable[[int], None] | None = None) -> None:
        filled = 0
        while filled < target.nbytes:
            filled += self.readinto(target[filled:])
            if arrived is not None:
                arrived(filled)

    # -- reading in parallel --------------------------------------------------------------

    def fill(self, target: memoryview, arrived: Callable[[int], None] | None = None) -> int:
        """Fill ``target`` with the next bytes: a share of them read here from the open
        response, the rest in ranged GETs of the same share (at most ``part_size``), up to
        ``concurrency`` requests in flight (this thread's included), as many as the store's
        :class:`~.bodies.Helpers` can spare. Threads are made for this call and joined before it
        returns. Where the first response's first MiB arrived faster than
        :data:`ONE_CONNECTION_SUFFICES`, the rest is read in order instead."""
        want = min(target.nbytes, self._end - self._pos)
        probed = 0
        if self._speed is None and self._body is not None and self._pos + want > self._body_end:
            # How fast does one connection deliver? Judged on the first response, from its
            # answer to at least _PROBE_BYTES of its body, before any range is asked for.
            probed = min(want, self._body_end - self._pos, max(0, _PROBE_BYTES - (self._pos - self._first)))
            self._read_exactly(target[:probed], arrived)
            self._speed = (self._pos - self._first) / max(time.perf_counter() - self._opened, 1e-9)
        rest = target[probed:want]
        later = None if arrived is None else (lambda filled: arrived(probed + filled))
        if self._speed is not None and self._speed >= ONE_CONNECTION_SUFFICES:
            self._read_exactly(rest, later)  # ranges would add requests, not speed
            return want
        return probed + self._fill_from(rest, later)

    def _fill_from(self, target: memoryview, arrived: Callable[[int], None] | None) -> int:
        want = target.nbytes
        held = min(want, self._body_end - self._pos) if self._body is not None else 0
        concurrency = self._store.concurrency
        # Each of the requests in flight takes an equal share, so they end together; within
        # [_SMALLEST_RANGE, part_size], for the round trip each one costs.
        share = min(self._store.part_size, max(_SMALLEST_RANGE, -(-want // concurrency)))
        # An object that came whole in its first response costs that one request; of a larger
        # one's first response this thread reads its share, and leaves the rest to the ranges.
        keep = held if self._body_end == self._end else min(held, share)
        ranges = [(offset, min(offset + share, want)) for offset in range(keep, want, share)]
        helpers = self._store.helpers
        workers = 0
        if ranges and (keep or len(ranges) > 1):  # else nothing to overlap
            workers = helpers.take(min(concurrency - bool(keep), len(ranges)))
        if not workers:
            self._read_exactly(target[:want], arrived)
            return want
        try:
            return self._fill_in_parallel(target, want, keep, ranges, workers, arrived)
        finally:
            helpers.give(workers)

    def _fill_in_parallel(self, target: memoryview, want: int, keep: int, ranges: list[tuple[int, int]],
                          workers: int, arrived: Callable[[int], None] | None) -> int:
        base = self._pos
        stopped = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jangdok-range")
        futures: list[concurrent.futures.Future[None]] = []

        def stop_all_if_failed(done: concurrent.futures.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                stopped.set()

        try:
            for start, stop in ranges:
                futures.append(pool.submit(self._fetch_range, target[start:stop], base + start, stopped))
                futures[-1].add_done_callback(stop_all_if_failed)
            self._read_exactly(target[:keep], arrived)
            self._drop_body()  # its share is read; the ranges fetch what the response held beyond it
            for (_, stop), future in zip(ranges, futures, strict=True):
                if future.exception() is not None:
                    break
                if arrived is not None:
                    arrived(stop)
        except BaseException:
            stopped.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        failures = [future.exception() for future in futures if not future.cancelled() and future.exception()]
        first = next((error for error in failures if not isinstance(error, _Stopped)), None)
        if first is not None:  # the cause, not the ranges abandoned because of it
            raise first
        self._pos = base + want
        return want

    def _fetch_range(self, target: memoryview, start: int, stopped: threading.Event) -> None:
        # Each range is retried as a lone request would be: on its own budget, not on one
        # shared by every range of the fill (whose attempts would add up, and whose clock would
        # run from the first range), and never after the fill was abandoned.
        response = self._request(start, start + target.nbytes, self._store.policy.budget(), stopped)
        piece = ObjectReader(self._store, self._key, response, start, start + target.nbytes)
        piece._stopped = stopped
        with piece:
            if piece.info.size != self.info.size:
                raise ObjectChanged(f"S3 error loading {self._store.path(self._key)}: the object changed size "
                                    "while it was being read; load it again")
            piece._read_exactly(target)
