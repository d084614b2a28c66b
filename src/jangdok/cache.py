"""The cache: entries (values with a verified header) in a store, with fallback and logging.

A :class:`Cache` resolves its settings and opens its store on first use, not on construction,
so creating one (or importing jangdok) touches neither the network nor ``.env`` files.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import random
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from . import entry
from .errors import (
    AccessDenied,
    CorruptEntry,
    InvalidValue,
    JangdokError,
    UnsupportedEntry,
    UntrustedEntry,
    WaitTimeout,
)
from .leases import Lease, lease_for, remove_stale
from .location import Location, is_reserved, normalize_key, parse_location
from .memoize import Memoized
from .memoize import memoize as _memoize
from .perprocess import PerProcess
from .settings import Settings
from .signing import Trust
from .stores import ObjectInfo, Reader, Store, open_store

__all__ = ["Cache", "Entry", "EntryInfo", "TierStats", "PruneReport", "Verdict"]

log = logging.getLogger("jangdok")

CLEANUP_AGE = 3600.0
"""Default age (seconds) past which a writer's leftovers are surely orphaned: no write lasts
an hour, so a temporary file or multipart upload that old belongs to a killed process."""
CLEANUP_CHANCE = 1 / 64
"""Chance that a ``put`` also tidies the leftovers next to its key: often enough that crash
debris cannot pile up, rarely enough to cost nothing noticeable (one folder scan or one
listing request in 64 writes)."""
# Pauses between a waiter's looks at a key being computed elsewhere: short at first (most
# computations are short), growing to a couple of seconds.
_FIRST_PAUSE = 0.05
_LAST_PAUSE = 2.0
# Reads of one entry before concluding that what they found (another key's entry, damage) is
# in storage and not in transit.
_VERIFYING_READS = 3
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class _Rejected(Exception):
    """A read whose entry could not be used, and the version of the object it came from."""

    def __init__(self, problem: JangdokError | entry.ForeignEntry, version: str, source: str = "") -> None:
        super().__init__(str(problem))
        self.problem = problem
        self.version = version
        self.source = source
        """The tier that served the read, if the store says (``Reader.source``)."""


def _event(name: str, path: str) -> dict[str, dict[str, str]]:
    """``extra=`` for a log record, so apps can render cache events their own way (the
    records carry ``jangdok_event`` and ``jangdok_path``) without parsing messages."""
    return {"extra": {"jangdok_event": name, "jangdok_path": path}}


@dataclass(frozen=True)
class EntryInfo:
    """What is known about one stored entry."""

    key: str
    path: str
    """Full path, as logs show it: ``s3://bucket/cache/x.pkl`` or ``cache/x.pkl``."""
    store: str
    """Which store holds it: ``"S3"``, ``"local"`` or ``"local (fallback)"``."""
    size: int
    """Stored size in bytes, header included."""
    created_at: float
    """When the entry was written (seconds since the epoch); file time for legacy pickles."""
    metadata: dict[str, Any] | None
    format_version: int | None
    """Entry format version; ``None`` for a legacy plain pickle."""
    expires_at: float | None = None
    """When the entry stops being a hit (seconds since the epoch); ``None``: never."""
    serializer: str | None = None
    """``pickle`` or ``safe``; ``None`` for a legacy plain pickle (pickle, without a header)."""
    signed_by: str | None = None
    """The id of the signing key that signed the entry; ``None``: unsigned."""


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Cache.verify` found of one entry, without deserializing it."""

    key: str
    status: str
    """``ok``; ``legacy`` (a plain pickle: nothing to check); ``damaged``; ``untrusted`` (with
    signing keys: unsigned, another key's, or forged); ``unsupported`` (a newer format);
    ``foreign`` (another key's entry); ``missing``."""
    detail: str = ""
    deleted: bool = False
    info: EntryInfo | None = None


@dataclass
class TierStats:
    """What one store did for this process's cache: counts, bytes and seconds."""

    hits: int = 0
    misses: int = 0
    """Absent entries, and entries that could not be used (damaged, unreadable here, another key's)."""
    bytes_read: int = 0
    seconds_reading: float = 0.0
    puts: int = 0
    bytes_written: int = 0
    seconds_writing: float = 0.0
    corrupt_deleted: int = 0
    skipped: int = 0
    """Intact entries kept but not used: a newer format, missing code, another key's entry."""
    untrusted: int = 0
    """Entries refused by signature checks (unsigned, another key's, forged), before unpickling."""
    computed: int = 0
    """Values ``get_or_compute`` computed in this process."""
    seconds_waiting: float = 0.0
    """Time ``get_or_compute`` spent waiting for other processes' computations (or leases)."""
    lease_takeovers: int = 0
    """Leases taken over from owners that stopped renewing them."""


class _Counters:
    """This process's statistics, per store label; made anew after fork (a child counts its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tiers: dict[str, TierStats] = {}

    def add(self, label: str, **amounts: float) -> None:
        with self.lock:
            tier = self.tiers.setdefault(label, TierStats())
            for name, amount in amounts.items():
                setattr(tier, name, getattr(tier, name) + amount)


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`Cache.prune` removed, or would remove with ``dry_run``."""

    removed: tuple[str, ...]
    """Keys of the entries removed (or to be removed)."""
    bytes_freed: int
    leftovers: int
    """Crash leftovers removed (temporary files, incomplete uploads); 0 in a dry run."""
    dry_run: bool


@dataclass(frozen=True)
class Entry:
    """A loaded value together with its :class:`EntryInfo`."""

    value: Any
    info: EntryInfo


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} B"


class Cache:
    """A cache of Python values under one location: a local folder or ``s3://bucket/prefix/``.

    ``Cache()`` uses ``CACHE_DIR`` from the environment or ``.env`` (default ``cache``).
    Keyword arguments override any setting of :class:`~jangdok.settings.Settings`
    (``endpoint_url``, ``fallback``, ``read_timeout``, ...).
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, **settings: Any) -> None:
        if location is not None:
            settings["cache_dir"] = os.fspath(location)
            parse_location(settings["cache_dir"])  # fail fast on a malformed location
        self._overrides = settings
        self._settings: Settings | None = None
        self._store: Store | None = None
        self._trust: Trust | None = None
        self._locks = PerProcess(threading.Lock)  # a lock held by a thread at fork() stays held
        self._counters = PerProcess(_Counters)

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        """A cache for already-resolved settings (no environment or ``.env`` lookups)."""
        cache = cls()
        cache._settings = settings
        return cache

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.resolve(**self._overrides)
        return self._settings

    @property
    def trust(self) -> Trust:
        """The signing keys entries are signed and checked with (none: no signatures)."""
        if self._trust is None:
            self._trust = Trust.from_secrets(self.settings.signing_keys, self.settings.allow_legacy)
        return self._trust

    @property
    def location(self) -> Location:
        """The configured location (even when the cache runs on its fallback folder)."""
        return parse_location(self.settings.cache_dir)

    @property
    def store(self) -> Store:
        """The open store, opened (with fallback if needed) on first access."""
        if self._store is None:
            with self._locks.get():
                if self._store is None:
                    self._store = self._open()
        return self._store

    @property
    def store_label(self) -> str:
        """``"S3"``, ``"local"`` or ``"local (fallback)"``: what logs call the store written to.
        (Reads served by a local tier say ``"local tier"``.)"""
        return self.store.name

    @property
    def fallback_reason(self) -> str | None:
        """Why the cache runs on its local fallback folder, or ``None`` if it does not (or has
        not been used yet: the store is opened on first use)."""
        return None if self._store is None else self._store.fallback_reason

    def _open(self) -> Store:
        return open_store(self.location, self.settings)

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, progress: entry.Progress | None = None) -> Any:
        """The value stored under ``key``, or ``default`` if it is missing or was corrupt."""
        found = self.get_entry(key, progress)
        return default if found is None else found.value

    def get_entry(self, key: str, progress: entry.Progress | None = None) -> Entry | None:
        """The value and its :class:`EntryInfo`, or ``None`` on a miss.

        A damaged entry is deleted and logged at WARNING, and counts as a miss. An entry from a
        newer jangdok (or needing code this process lacks) is kept, logged, and missed. Store
        failures raise: a broken transfer never deletes anything. ``progress(done, total)`` is
        called as the bytes arrive. With the ``mmap`` setting, local entries are mapped rather
        than read: their arrays then share pages with the file.
        """
        key = normalize_key(key)
        path = self.store.path(key)
        started = time.perf_counter()
        mapping = self.settings.mmap and self.store.capabilities.mapping

        def read_once() -> tuple[entry.Decoded, ObjectInfo, int, str] | None:
            if mapping:
                mapped = self.store.map(key)
                if mapped is None:
                    return None
                view, info = mapped
                try:
                    return entry.decode_buffer(view, key, self.trust), info, view.nbytes, self.store.name
                except entry.ExpiredEntry:
                    return None
                except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry, UntrustedEntry) as exc:
                    raise _Rejected(exc, info.version) from exc
            reader = self.store.read(key)
            if reader is None:
                return None
            with reader:
                try:
                    decoded = entry.decode(reader, reader.size, key, progress, self.trust)
                    return decoded, reader.info, reader.size, reader.source or self.store.name
                except entry.ExpiredEntry:
                    return None
                except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry, UntrustedEntry) as exc:
                    raise _Rejected(exc, reader.info.version, reader.source) from exc

        found = self._verified(key, path, read_once)
        if found is None:
            log.debug("cache miss: %s", path)
            self._count(misses=1)
            return None
        decoded, object_info, size, label = found
        info = self._info(key, path, size, decoded.header, object_info.modified, label)
        seconds = time.perf_counter() - started
        self._count(hits=1, bytes_read=size, seconds_reading=seconds, label=label)
        log.info("cache loaded (%s): %s, %s in %.1f ms", label, path, _megabytes(size),
                 seconds * 1e3, **_event("loaded", path))
        return Entry(decoded.value, info)

    def _count(self, label: str | None = None, **amounts: float) -> None:
        self._counters.get().add(label or self.store.name, **amounts)

    def stats(self) -> dict[str, TierStats]:
        """Hits, misses, bytes and seconds read and written by this process, per store
        (``"S3"``, ``"local"``, ``"local (fallback)"``). A forked child starts from zero."""
        counters = self._counters.get()
        with counters.lock:
            return {label: dataclasses.replace(tier) for label, tier in counters.tiers.items()}

    def _verified(self, key: str, path: str, read_once: Callable[[], T | None],
                  after_discard: bool = False, repair: bool = True) -> T | None:
        """Run ``read_once`` until it returns something it could verify, or a miss.

        A read that finds another key's entry or damage is not believed at once: a response
        that crossed over, or was garbled in transit, looks exactly like that. So it is read
        again, and damage is acted on (its version deleted) only once seen twice in the same
        version. An entry that stays another key's is kept, logged and missed: it may be the
        only copy of that key's entry (a file renamed or copied by hand). After deleting
        damage it reads once more: a composed store may hold another copy (a damaged local
        copy of an intact remote entry).
        """
        seen: dict[type, str] = {}
        confirmed = False
        for _ in range(_VERIFYING_READS):
            try:
                return read_once()
            except _Rejected as rejected:
                problem, version, source = rejected.problem, rejected.version, rejected.source
            # Refusals by format or signature come after the checksum matched: not transit damage.
            confirmed = isinstance(problem, (UnsupportedEntry, UntrustedEntry)) or seen.get(type(problem)) == version
            if confirmed:
                break
            seen[type(problem)] = version
            log.debug("reading %s again: %s", path, problem)
        if not confirmed:  # a different version each time: writers are busy; judge nothing
            log.warning("cache entry unreadable while being rewritten, treated as a miss: %s: %s", path, problem)
            self._count(skipped=1)
        elif isinstance(problem, entry.ForeignEntry):
            self._count(skipped=1)
            log.warning("cache entry skipped (kept): %s: %s", path, problem, **_event("skipped", path))
        elif not repair:
            log.warning("cache entry unusable (left as it is): %s: %s", path, problem)
        elif self._discard(key, path, problem, version, source) and not after_discard:
            return self._verified(key, path, read_once, after_discard=True)
        return None

    def _discard(self, key: str, path: str, problem: JangdokError, version: str, source: str = "") -> bool:
        """Delete the damaged version that was read; ``True`` if it was deleted."""
        if isinstance(problem, UnsupportedEntry):
            self._count(skipped=1)
            log.warning("cache entry skipped (kept for other readers): %s: %s", path, problem,
                        **_event("skipped", path))
            return False
        if isinstance(problem, UntrustedEntry):
            self._count(untrusted=1, label=source)
            if not self.settings.delete_untrusted:
                log.warning("cache entry refused, not loaded (kept for whoever holds its key; "
                            "JANGDOK_DELETE_UNTRUSTED=1 deletes such entries): %s: %s", path, problem,
                            **_event("untrusted", path))
                return False
            log.warning("cache entry refused, not loaded: %s: %s", path, problem, **_event("untrusted", path))
        what = "untrusted" if isinstance(problem, UntrustedEntry) else "corrupt"
        try:
            # Only the version that was read: a writer may have replaced it with a good entry.
            deleted = self.store.delete(key, version=version)
        except JangdokError as exc:
            log.warning("%s cache entry could not be deleted: %s: %s (%s)", what, path, problem, exc)
            return False
        if deleted:
            if what == "corrupt":
                self._count(corrupt_deleted=1, label=source)
            where = f" ({source})" if source else ""
            log.warning("%s cache entry deleted%s: %s: %s", what, where, path, problem,
                        **_event(f"{what}_deleted", path))
        else:
            log.warning("%s cache entry already replaced: %s: %s", what, path, problem)
        return deleted

    def _info(self, key: str, path: str, size: int, header: entry.EntryHeader | None, modified: float,
              label: str | None = None) -> EntryInfo:
        label = label or self.store.name
        if header is None:  # a legacy pickle knows nothing about itself; its file time will do
            return EntryInfo(key, path, label, size, modified, None, None)
        return EntryInfo(key, path, label, size, header.created_at, header.metadata, header.version,
                         header.expires_at, header.serializer, header.key_id)

    def stat(self, key: str, repair: bool = True) -> EntryInfo | None:
        """Size, creation time, metadata and store of an entry, reading only its header
        (one ranged read; a second only for metadata larger than the first read)."""
        key = normalize_key(key)
        path = self.store.path(key)

        def read_once() -> EntryInfo | None:
            head = self._read_head(key, entry.HEADER_PROBE_BYTES)
            if head is None:
                return None
            data, found = head
            needed = entry.header_size(data)
            if needed is not None and needed > len(data):
                head = self._read_head(key, needed)
                if head is None:
                    return None
                data, found = head  # all from the second read, so from one version of the object
            try:
                header = entry.read_header(io.BytesIO(data))
                if isinstance(header, entry.EntryHeader):
                    entry.check_size(header, found.size)
                    entry.check_key(header, key)
            except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry) as exc:
                raise _Rejected(exc, found.version) from exc
            parsed = header if isinstance(header, entry.EntryHeader) else None
            return self._info(key, path, found.size, parsed, found.modified)

        return self._verified(key, path, read_once, repair=repair)

    def _read_head(self, key: str, stop: int) -> tuple[bytes, ObjectInfo] | None:
        reader = self.store.read(key, 0, stop)
        if reader is None:
            return None
        with reader:
            return reader.read(), reader.info

    def verify(self, key: str, delete_damaged: bool = False) -> Verdict:
        """Check one entry's checksum (and signature, with signing keys) without deserializing
        it, so nothing of it runs. With ``delete_damaged``, a damaged entry is deleted (the
        version that was read) once a second read agrees, as loads do: damage in transit
        must never cost a good entry."""
        key = normalize_key(key)
        verdict, version = self._verify_once(key)
        if verdict.status != "damaged" or not delete_damaged:
            return verdict
        again, version_again = self._verify_once(key)
        if again.status != "damaged" or version_again != version:
            return again  # the damage was in transit, or the entry was rewritten meanwhile
        return dataclasses.replace(again, deleted=self.store.delete(key, version=version))

    def _verify_once(self, key: str) -> tuple[Verdict, str | None]:
        reader = self.store.read(key)
        if reader is None:
            return Verdict(key, "missing", "no entry under this key"), None
        with reader:
            version, size, modified, label = reader.info.version, reader.size, reader.info.modified, reader.source
            verdict = self._judge(key, reader, size, modified, label)
        return verdict, version

    def _judge(self, key: str, reader: Reader, size: int, modified: float, label: str) -> Verdict:
        try:
            header = entry.verify(reader, size, key, self.trust)
        except CorruptEntry as exc:
            return Verdict(key, "damaged", str(exc))
        except UntrustedEntry as exc:
            return Verdict(key, "untrusted", str(exc))
        except UnsupportedEntry as exc:
            return Verdict(key, "unsupported", str(exc))
        except entry.ForeignEntry as exc:
            return Verdict(key, "foreign", str(exc))
        info = self._info(key, self.store.path(key), size, header, modified, label or None)
        if header is None and self.trust.signing and not self.trust.allow_legacy:
            return Verdict(key, "untrusted", "a plain pickle, which cannot carry a signature; this cache "
                           "requires signed entries (JANGDOK_ALLOW_LEGACY=1 loads plain pickles)", info=info)
        if header is None:
            return Verdict(key, "legacy", "a plain pickle: no checksum to verify", info=info)
        return Verdict(key, "ok", "checksum" + (f" and signature (key {header.key_id})" if header.mac else "")
                       + " verified", info=info)

    def exists(self, key: str) -> bool:
        """Whether an entry is stored under ``key`` (not whether it is intact)."""
        return self.store.exists(normalize_key(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys of the stored entries that start with ``prefix``."""
        return (found.key for found in self.store.list(unicodedata.normalize("NFC", prefix))
                if not is_reserved(found.key))

    # -- writing --------------------------------------------------------------------------

    def put(self, key: str, value: Any, metadata: Mapping[str, Any] | None = None,
            progress: entry.Progress | None = None, ttl: float | None = None) -> EntryInfo:
        """Store ``value`` under ``key`` atomically, with optional JSON-able ``metadata``.

        Numpy arrays are written from their own memory, without a copy: do not change them
        from another thread until ``put`` returns. ``progress(done, total)`` is called as the
        bytes go out. After ``ttl`` seconds (default: the ``ttl`` setting) the entry is a miss.
        """
        key = normalize_key(key)
        ttl = self.settings.ttl if ttl is None else ttl
        if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
            raise InvalidValue(f"ttl for key {key!r} must be a positive number of seconds, got {ttl!r}")
        store = self.store
        path = store.path(key)
        started = time.perf_counter()
        created = time.time()
        header, chunks = entry.encode(value, metadata, created_at=created, key=key,
                                      compression=self.settings.compression,
                                      expires_at=None if ttl is None else created + ttl,
                                      serializer=self.settings.serializer, trust=self.trust)
        total = header.entry_size
        store.write(key, chunks, None if progress is None else lambda done: progress(done, total))
        seconds = time.perf_counter() - started
        self._count(puts=1, bytes_written=total, seconds_writing=seconds)
        log.info("cache saved (%s): %s, %s in %.1f ms", store.name, path, _megabytes(total),
                 seconds * 1e3, **_event("saved", path))
        if random.random() < CLEANUP_CHANCE:
            self._tidy(key.rpartition("/")[0] + "/" if "/" in key else "")
        return self._info(key, path, header.entry_size, header, header.created_at)

    def get_or_compute(self, key: str, compute: Callable[[], T], metadata: Mapping[str, Any] | None = None,
                       ttl: float | None = None, timeout: float | None = None,
                       progress: entry.Progress | None = None,
                       accept: Callable[[EntryInfo], bool] | None = None) -> T:
        """The value under ``key``; on a miss, ``compute()`` it once, store it and return it.

        When several threads, processes or machines miss the same key at once, one computes
        and the others wait for its entry (see :mod:`jangdok.leases`): a lock file on a local
        folder, a lease object on S3 that a waiter takes over if its owner dies. Waiting is
        bounded by ``timeout`` (default: the ``wait_timeout`` setting), then
        :class:`~jangdok.errors.WaitTimeout` names the key and who holds it. If ``compute``
        raises, the lease is released for a waiter to try, and the error propagates. If the
        value cannot be saved, a WARNING says why and the value is returned all the same.
        ``progress`` follows the load or the save, as in :meth:`get_entry` and :meth:`put`.
        ``accept(info)`` judges an entry by its :class:`EntryInfo` (its metadata, say): one it
        refuses, computed from other inputs, counts as missing and is replaced.
        """
        key = normalize_key(key)
        found = self._usable(key, progress, accept, look_first=False)
        if found is not None:
            return found.value
        store = self.store
        lease: Lease | None = lease_for(store, key, self.settings.lease_seconds)
        started = time.monotonic()
        deadline = started + (self.settings.wait_timeout if timeout is None else timeout)
        pause = _FIRST_PAUSE
        waited = 0.0  # stays 0 unless another process held the lease: taking a free one is no wait
        looked: str | None = None  # the version last judged: a poll loads only a new one
        while lease is not None and not (acquired := self._try_lease(lease, store.path(key))):
            if acquired is None:
                lease = None
                break
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"waited {time.monotonic() - started:.1f} s for {store.path(key)}, which {lease.holder} is "
                    f"computing (lease {lease.path}); wait longer (timeout=, JANGDOK_WAIT_TIMEOUT) or check "
                    "that process"
                )
            time.sleep(random.uniform(pause / 2, pause))  # jitter: waiters must not poll in step
            pause = min(pause * 1.5, max(_FIRST_PAUSE, min(_LAST_PAUSE, self.settings.lease_seconds / 3)))
            # The entry first: once its owner has saved it, taking the freed lease would cost two
            # requests for nothing. One cheap request (stat) per poll, and only a version not yet
            # judged is loaded: an entry kept but unusable here is not read again and again.
            waited = time.monotonic() - started
            current = store.stat(key)
            if current is None or current.version == looked:
                continue
            looked = current.version
            found = self._usable(key, progress, accept, look_first=accept is not None)
            if found is not None:
                self._count(seconds_waiting=waited, lease_takeovers=lease.takeovers)
                return found.value
        try:
            if lease is not None:
                self._count(seconds_waiting=waited and time.monotonic() - started, lease_takeovers=lease.takeovers)
                found = self._usable(key, progress, accept, look_first=True)  # saved while this one waited
                if found is not None:
                    return found.value
            value = compute()
            self._count(computed=1)
            try:
                self.put(key, value, metadata, progress, ttl)
            except JangdokError as exc:
                log.warning("computed %s but could not save it: %s", store.path(key), exc,
                            **_event("save_failed", store.path(key)))
            return value
        finally:
            if lease is not None:
                lease.release()

    @staticmethod
    def _try_lease(lease: Lease, path: str) -> bool | None:
        """Whether this process now holds the lease; ``None`` if it may not take leases at all
        (read-only credentials): it then computes without coordinating, as a cache without
        leases would, and says so."""
        try:
            return lease.try_acquire()
        except AccessDenied as exc:
            log.warning("cannot take a compute lease for %s (%s); computing without coordinating with other "
                        "processes", path, exc)
            return None

    def _usable(self, key: str, progress: entry.Progress | None, accept: Callable[[EntryInfo], bool] | None,
                look_first: bool) -> Entry | None:
        """The entry under ``key`` if there is one ``accept`` takes. ``look_first``: look before
        loading (one cheap request: ``exists``, or ``stat`` to judge by the header), so that
        finding nothing counts no miss."""
        if look_first:
            if accept is None:
                if not self.store.exists(key):
                    return None
            else:
                info = self.stat(key)
                if info is None or not accept(info):
                    return None
        found = self.get_entry(key, progress)
        if found is None or (accept is not None and not accept(found.info)):
            return None
        return found

    @overload
    def memoize(self, fn: Callable[P, R], /, *, version: str | int | None = None, source: bool = False,
                ignore: str | Iterable[str] = (), ttl: float | None = None,
                name: str | None = None) -> Memoized[P, R]: ...

    @overload
    def memoize(self, fn: None = None, /, *, version: str | int | None = None, source: bool = False,
                ignore: str | Iterable[str] = (), ttl: float | None = None,
                name: str | None = None) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...

    def memoize(self, fn: Callable[P, R] | None = None, /, *, version: str | int | None = None,
                source: bool = False, ignore: str | Iterable[str] = (), ttl: float | None = None,
                name: str | None = None) -> Memoized[P, R] | Callable[[Callable[P, R]], Memoized[P, R]]:
        """Cache a function's results here, keyed by its name and arguments: ``@cache.memoize`` or
        ``@cache.memoize(version="2", source=True, ignore=("verbose",), ttl=3600)``. Calls go
        through :meth:`get_or_compute`, so concurrent callers compute once.
        See :func:`jangdok.memoize.memoize`."""
        options: dict[str, Any] = dict(version=version, source=source, ignore=ignore, ttl=ttl, name=name)
        return _memoize(self, **options) if fn is None else _memoize(self, fn, **options)

    def _tidy(self, prefix: str) -> None:
        """Opportunistic cleanup from ``put``: a failure here must never fail the write."""
        try:
            self.store.cleanup(CLEANUP_AGE, prefix)
        except JangdokError as exc:
            log.debug("opportunistic cleanup under %r failed: %s", prefix, exc)

    def delete(self, key: str) -> bool:
        """Remove an entry; ``True`` if there was one."""
        return self.store.delete(normalize_key(key))

    def prune(self, older_than: float | None = None, max_bytes: int | None = None,
              dry_run: bool = False, progress: entry.Progress | None = None) -> PruneReport:
        """Remove expired entries, entries written more than ``older_than`` seconds ago, then
        the oldest entries until the rest fit in ``max_bytes``; and crash leftovers as
        :meth:`cleanup` does. ``dry_run`` reports without removing anything.

        Each entry is removed only in the version that was listed, so one rewritten meanwhile
        by another process stays. Finding expired entries reads each entry's header (one
        ranged read per entry on S3); on a bucket, a lifecycle rule expiring objects by age
        does the ``older_than`` part without any client. ``progress(done, total)`` follows
        the entries examined.
        """
        now = time.time()
        doomed: list[ObjectInfo] = []
        kept: list[ObjectInfo] = []
        listed = [found for found in self.store.list() if not is_reserved(found.key)]
        for done, found in enumerate(listed, 1):
            old = older_than is not None and now - found.modified > older_than
            (doomed if old or self._expired(found.key, now) else kept).append(found)
            if progress is not None:
                progress(done, len(listed))
        if max_bytes is not None:
            kept.sort(key=lambda found: found.modified)  # the least recently written go first
            total = sum(found.size for found in kept)
            while kept and total > max_bytes:
                total -= kept[0].size
                doomed.append(kept.pop(0))
        if dry_run:
            return PruneReport(tuple(found.key for found in doomed), sum(found.size for found in doomed), 0, True)
        gone = set(self.store.delete_many(doomed))
        removed = [found for found in doomed if found.key in gone]
        freed = sum(found.size for found in removed)
        leftovers = self.cleanup(CLEANUP_AGE)
        log.info("prune removed %d entries (%s) and %d leftover(s) under %s", len(removed), _megabytes(freed),
                 leftovers, self.store.location.url)
        return PruneReport(tuple(found.key for found in removed), freed, leftovers, False)

    def _expired(self, key: str, now: float) -> bool:
        """Whether an entry's header says it has expired; unreadable headers are not prune's
        business (a read deletes damage, and keeps what it cannot judge)."""
        head = self._read_head(key, entry.HEADER_PROBE_BYTES)
        if head is None:
            return False
        try:
            header = entry.read_header(io.BytesIO(head[0]))
        except JangdokError:
            return False
        return isinstance(header, entry.EntryHeader) and header.expires_at is not None and header.expires_at <= now

    def cleanup(self, older_than: float = CLEANUP_AGE) -> int:
        """Remove what writers killed mid-write left behind: the store's orphaned temporary
        files, on S3 the incomplete multipart uploads under the prefix, and the leases (lock
        files) of computations whose owner died, if older than ``older_than`` seconds (younger
        ones may belong to live writers). Returns the count.

        ``put`` also does this now and then, next to the key it wrote; on S3, a bucket
        lifecycle rule (AbortIncompleteMultipartUpload) does it without any client.
        """
        removed = self.store.cleanup(older_than) + remove_stale(self.store, older_than, self.settings.lease_seconds)
        if removed:
            log.info("cleanup removed %d leftover(s) under %s", removed, self.store.location.url)
        return removed

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._overrides.get("cache_dir") or (self._settings.cache_dir if self._settings else "CACHE_DIR")
        return f"<Cache {where}{' (fallback)' if self.fallback_reason else ''}>"
