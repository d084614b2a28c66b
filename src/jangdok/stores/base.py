"""The store contract: a place that keeps named byte strings, and nothing more.

Stores move bytes. Entry formats, checksums, serialization, fallback and logging of what was
served live above them, so a new backend is only this contract. Values travel as chunks
(``bytes`` or any iterable of bytes-like chunks in; a file-like reader out) so large entries can
stream without a whole copy in memory.
"""

from __future__ import annotations

import enum
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from ..errors import InvalidRange
from ..location import Location

if TYPE_CHECKING:
    from .tiered import LocalTier

__all__ = ["Store", "Reader", "ObjectInfo", "Capabilities", "Chunks", "UNCHANGED", "Unchanged", "iter_chunks",
           "check_range"]

Chunks = Union[bytes, bytearray, memoryview, Iterable[Union[bytes, bytearray, memoryview]]]
"""What a store accepts to write: one bytes-like value, or an iterable of bytes-like chunks."""


def iter_chunks(data: Chunks) -> Iterator[memoryview]:
    """Normalise :data:`Chunks` into non-empty byte views without copying."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = (data,)
    for chunk in data:
        view = memoryview(chunk).cast("B")
        if view.nbytes:
            yield view


def check_range(start: int, stop: int | None) -> None:
    """Refuse a byte range no store can serve, with the same error on every backend."""
    if start < 0 or (stop is not None and stop < start):
        raise InvalidRange(f"byte range [{start}, {stop}) is invalid: start must be >= 0 and stop >= start")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one stored object, without reading it."""

    key: str
    size: int
    modified: float
    """Last modification time, seconds since the epoch."""
    version: str
    """Changes whenever the object is replaced (an ETag, or file identity and time), so a
    caller can act on exactly the object it read and not on a newer one."""


class Unchanged(enum.Enum):
    """The answer of :meth:`Store.read_if_changed` when the object is still the given version."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class Reader(io.RawIOBase):
    """A readable stream of (part of) one object, and what the object was when opened."""

    size: int
    """Bytes this reader delivers in all (the requested range, clipped to the object)."""
    info: ObjectInfo
    """The whole object the bytes come from: its total size, time and version."""
    source: str = ""
    """Which store served the bytes, for logs and statistics (a composed store's tier); empty
    means the store that was asked."""
    fill: Callable[[memoryview, Callable[[int], None] | None], int] | None = None
    """Set by readers that can fetch parts of an object at once (S3's ranged GETs):
    ``fill(target, arrived)`` reads the next bytes into all of ``target``, in parallel and
    straight from the network, and returns how many came (fewer only where the object ends).
    ``arrived(filled)`` is called, in the calling thread, each time the run of filled bytes at
    the start of ``target`` grows, so the caller hashes them in order while the rest arrives.
    ``None``: read in order with ``readinto``."""

    def readable(self) -> bool:
        return True



class Capabilities:
    """What a backend can promise; the layers above adapt to these, never to backend types.

    ``shared``, ``range_reads`` and ``mapping`` are fixed by the backend. ``conditional_write``
    and ``conditional_delete`` depend on the server, which a backend may have to ask (S3 probes
    each on first access): ``True`` it honours the condition, ``False`` it definitely does not
    (a server that ignores it), ``None`` *unknown* (the probe could not run: an outage, or
    credentials that may not write). Unknown is never taken for ``False`` and is asked again on
    a later access. Every consumer must be correct for all three answers; with ``None``, check
    first and still send the condition, which is atomic where the server honours it and a
    check-then-act where it does not.
    """

    shared: bool
    """Other machines see the same entries (S3), or only this machine does (a local folder)."""
    range_reads: bool
    """``read(key, start, stop)`` fetches only the requested bytes."""
    mapping: bool
    """``map(key)`` gives an object's bytes as a memory map instead of reading them."""

    def __init__(self, *, shared: bool, range_reads: bool, mapping: bool = False,
                 conditional_delete: bool | None = False, conditional_write: bool | None = False) -> None:
        self.shared = shared
        self.range_reads = range_reads
        self.mapping = mapping
        self._conditional_delete = conditional_delete
        self._conditional_write = conditional_write

    @property
    def conditional_delete(self) -> bool | None:
        """``delete(key, version=...)`` is atomic: it can never remove a newer object written
        meanwhile. Where not ``True``, it checks then deletes, and a write in between can be
        lost (``None``: unless the server turns out to honour the condition it is sent)."""
        return self._conditional_delete

    @property
    def conditional_write(self) -> bool | None:
        """``write_if`` is atomic: create-if-absent and replace-if-version are decided by the
        server, so two writers can never both succeed. ``False``: ``write_if`` is unsupported
        or (where a server ignores the conditions) only best effort; ``None``: the server was
        not asked yet, or could not be."""
        return self._conditional_write

    @property
    def conditional_batch_delete(self) -> bool | None:
        """``delete_many`` removes many objects a request, each only in its listed version;
        else (or unknown) callers do better with one versioned ``delete`` per object, in
        parallel."""
        return False

    def __repr__(self) -> str:
        return (f"Capabilities(shared={self.shared}, range_reads={self.range_reads}, mapping={self.mapping}, "
                f"conditional_delete={self.conditional_delete}, conditional_write={self.conditional_write})")


class Store(ABC):
    """A flat namespace of keys under one :class:`~jangdok.location.Location`.

    A missing key is not an error: ``read`` and ``stat`` return ``None`` and ``delete`` returns
    ``False``. Failures raise :mod:`jangdok.errors` types, never the client library's.
    """

    location: Location
    capabilities: Capabilities
    name: str
    """Short label for logs and statistics: ``"local"``, ``"S3"`` or ``"local (fallback)"``."""
    fallback_reason: str | None = None
    """Why this store serves a local fallback folder instead of its location, if it does."""

    @abstractmethod
    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        """Open bytes ``[start, stop)`` of an object for reading, or ``None`` if it is missing.

        ``stop`` (exclusive, ``None`` for the end) must be ``>= start``; an empty range, or a
        range past the end of the object, reads as empty. A negative or reversed range raises
        :class:`~jangdok.errors.InvalidRange` (see :func:`check_range`).

        The reader raises (never returns short data) if the transfer breaks in a way the
        backend cannot recover from, so a broken transfer is never mistaken for a short object.
        """

    @abstractmethod
    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        """Store an object atomically: readers see the previous object or this one, never a mix.
        Returns the new object's version.

        ``progress(bytes_written)`` is called as the bytes go out, never going backwards."""

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """Store a small object only if the key is still ``version`` (``None``: only if it is
        absent), and return its new version; ``None`` if the condition did not hold.

        For coordination objects (leases), where two writers must never both succeed; see
        ``capabilities.conditional_write``."""
        raise NotImplementedError(f"{self.name} stores cannot write conditionally; check capabilities")

    def read_if_changed(self, key: str, version: str) -> Reader | Unchanged | None:
        """:data:`UNCHANGED` if the object is still ``version``, else a reader of the whole
        object as it is now (``None`` if it is gone). A backend with conditional reads answers
        this in one request that transfers no body when nothing changed."""
        found = self.stat(key)
        if found is None:
            return None
        if found.version == version:
            return UNCHANGED
        return self.read(key)

    @abstractmethod
    def delete(self, key: str, version: str | None = None) -> bool:
        """Remove an object; ``True`` if it existed. With ``version``, only if the object is
        still that version (so deleting a damaged object never removes its replacement)."""

    def delete_many(self, found: Iterable[ObjectInfo]) -> list[str]:
        """Remove each listed object if it is still the version listed; the keys removed.
        Backends with batch requests override this to send fewer of them."""
        return [item.key for item in found if self.delete(item.key, version=item.version)]

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of an object, or ``None`` if it is missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no particular order."""

    def map(self, key: str) -> tuple[memoryview, ObjectInfo] | None:
        """The whole object as a private (copy-on-write) memory map, or ``None`` if missing.

        Only for stores whose capabilities say ``mapping``. Writing to the view never reaches
        the stored object; the map lives as long as any view of it.
        """
        raise NotImplementedError(f"{self.name} stores cannot map objects; check capabilities.mapping")

    def cleanup(self, older_than: float, prefix: str = "") -> int:
        """Remove what writers killed mid-write left behind (temporary files, incomplete
        multipart uploads) under ``prefix`` and older than ``older_than`` seconds, so that no
        live writer loses its work. Returns how many leftovers were removed."""
        return 0

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def authority(self) -> Store:
        """The store that holds the truth about this one's objects: the store itself, or, for
        a store that keeps copies of another's objects (a local tier), that other store.
        Inspecting entries (``verify``, ``stat``) reads it, so it never copies an object nor
        answers from a copy; writes and deletes still go through this store."""
        return self

    def local_tier(self) -> LocalTier | None:
        """The local copies this store keeps of its authority's objects, for inspecting them
        (where, within which bound, which); ``None`` for a store that keeps none."""
        return None

    def path(self, key: str) -> str:
        """The full path of a key, as logs and error messages show it."""
        return self.location.path(key)

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections; the store must not be used afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location.url}>"
