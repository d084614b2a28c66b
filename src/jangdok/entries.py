"""Entries: values in a store, verified on the way out, counted and logged.

:class:`Entries` is the layer under :class:`~jangdok.cache.Cache`: it takes keys already
checked and normalised (``Cache`` does that, once, where a key enters) and turns them into
verified reads and atomic writes of the entry format. A read that finds damage, another key's
entry or an entry it may not trust is not believed at once (see :meth:`Entries.load`); damage
is deleted only in the version that was read. Every load and save is logged with the store
that served it and counted per store label, for :meth:`Cache.stats`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import entry, expiry
from .entry import Trust
from .errors import CorruptEntry, JangdokError, ObjectChanged, UnsupportedEntry, UntrustedEntry
from .perprocess import PerProcess
from .settings import Settings
from .stores import ObjectInfo, Reader, Store

__all__ = ["Entries", "Entry", "EntryInfo", "Verdict", "TierStats", "Counters", "event", "megabytes", "CLEANUP_AGE"]

log = logging.getLogger("jangdok")

CLEANUP_AGE = 3600.0
"""Default age (seconds) past which a writer's leftovers are surely orphaned: no write lasts
an hour, so a temporary file or multipart upload that old belongs to a killed process."""
CLEANUP_CHANCE = 1 / 64
"""Chance that a save also tidies the leftovers next to its key: often enough that crash
debris cannot pile up, rarely enough to cost nothing noticeable (one folder scan or one
listing request in 64 writes)."""
# Reads of one entry before concluding that what they found (another key's entry, damage) is
# in storage and not in transit.
_VERIFYING_READS = 3
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

class _Rejected(Exception):
    """A read whose entry could not be used, and the version of the object it came from."""

    def __init__(self, problem: JangdokError | entry.ForeignEntry, version: str, source: str = "") -> None:
        super().__init__(str(problem))
        self.problem = problem
        self.version = version
        self.source = source
        """The tier that served the read, if the store says (``Reader.source``)."""


def _let_go(problem: E) -> E:
    """A refusal kept for its message, without the tracebacks of it and of its causes. Their
    frames hold the entry that was read and views of it: kept, the entry stayed in memory while
    it was read again to confirm the damage (twice the memory), and the frame that keeps the
    refusal made a reference cycle with them, which only a garbage collection freed."""
    seen: set[int] = set()
    link: BaseException | None = problem
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return problem


def event(name: str, path: str) -> dict[str, str]:
    """``extra=`` for a log record, so apps can render cache events their own way (the
    records carry ``jangdok_event`` and ``jangdok_path``) without parsing messages."""
    return {"jangdok_event": name, "jangdok_path": path}


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
    """The id of the signing key the entry's header names; ``None``: unsigned. A load or
    ``verify`` checks the signature; ``stat`` and listings read the header alone, so there it is
    only what the header claims."""
    object_version: str = ""
    """The stored object's version when it was read (an S3 ETag, or a file's identity): it
    changes whenever the entry is replaced, so an action can be pinned to the entry judged."""


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


class Counters:
    """This process's statistics, per store label; made anew after fork (a child counts its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tiers: dict[str, TierStats] = {}

    def add(self, label: str, **amounts: float) -> None:
        with self.lock:
            tier = self._tier(label)
            for name, amount in amounts.items():
                setattr(tier, name, getattr(tier, name) + amount)

    def hit(self, label: str, size: int, seconds: float) -> None:
        """``add(label, hits=1, bytes_read=size, seconds_reading=seconds)``, as every load counts
        it: named fields, not keyword arguments and getattr, which cost a small load (a fraction
        of a millisecond with cold caches) several times what the counting does."""
        with self.lock:
            tier = self.tiers.get(label) or self._tier(label)
            tier.hits += 1
            tier.bytes_read += size
            tier.seconds_reading += seconds

    def saved(self, label: str, size: int, seconds: float) -> None:
        """``add(label, puts=1, bytes_written=size, seconds_writing=seconds)``: as :meth:`hit`."""
        with self.lock:
            tier = self.tiers.get(label) or self._tier(label)
            tier.puts += 1
            tier.bytes_written += size
            tier.seconds_writing += seconds

    def _tier(self, label: str) -> TierStats:
        tier = self.tiers.get(label)
        if tier is None:
            tier = self.tiers[label] = TierStats()
        return tier



@dataclass(frozen=True)
class Entry:
    """A loaded value together with its :class:`EntryInfo`."""

    value: Any
    info: EntryInfo


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} B"



class Entries:
    """Verified reads and atomic writes of entries in one open store.

    Keys must already be normalised (:func:`~jangdok.location.normalize_key`); this layer
    trusts them. ``counters`` is this process's statistics (made anew after fork).
    """

    def __init__(self, store: Store, trust: Trust, settings: Settings, counters: PerProcess[Counters],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.trust = trust
        self.settings = settings
        self._counters = counters
        self.clock = clock
        """The wall clock entries are stamped and judged expired by (tests move it)."""

    def path(self, key: str) -> str:
        return self.store.path(key)

    def count(self, label: str | None = None, **amounts: float) -> None:
        """Add to this process's statistics for ``label`` (default: the store's name)."""
        self._counters.get().add(label or self.store.name, **amounts)

    # -- reading --------------------------------------------------------------------------

    def load(self, key: str, progress: entry.Progress | None = None) -> Entry | None:
        """The value and its :class:`EntryInfo`, or ``None`` on a miss (see ``Cache.get_entry``)."""
        found = self._read(key, progress)
        if found is None:
            return None
        decoded, object_info, size, label, path = found
        return Entry(decoded.value, self._info(key, path, size, decoded.header, object_info.modified,
                                               object_info.version, label))

    def load_value(self, key: str, progress: entry.Progress | None = None, default: Any = None) -> Any:
        """The value alone, or ``default`` on a miss: a load as :meth:`load` makes it, without
        the :class:`EntryInfo` nobody asked for (a tenth of a small load)."""
        found = self._read(key, progress)
        return default if found is None else found[0].value

    def _read(self, key: str,
              progress: entry.Progress | None) -> tuple[entry.Decoded, ObjectInfo, int, str, str] | None:
        """A verified load, counted and logged: what was decoded, the object it came from, its
        size, the store (or tier) that served it, and its path; ``None`` on a miss."""
        path = self.store.path(key)
        started = time.perf_counter()
        # With signing keys, what is verified must be what is unpickled: a map, even a private
        # one, shows later writes to the file in every page not yet copied, so bytes could change
        # between the check and the load. Signed loads are read into this process's own memory.
        mapping = self.settings.mmap and self.store.capabilities.mapping and not self.trust.signing

        def read_once() -> tuple[entry.Decoded, ObjectInfo, int, str] | None:
            if mapping:
                mapped = self.store.map(key)
                if mapped is None:
                    return None
                view, info = mapped
                try:
                    return entry.decode_buffer(view, key, self.trust, self.clock()), info, view.nbytes, self.store.name
                except entry.ExpiredEntry:
                    return None
                except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry, UntrustedEntry) as exc:
                    raise _Rejected(exc, info.version) from exc
            reader = self.store.read(key)
            if reader is None:
                return None
            with reader:
                try:
                    decoded = entry.decode(reader, reader.size, key, progress, self.trust, self.clock())
                    return decoded, reader.info, reader.size, reader.source or self.store.name
                except entry.ExpiredEntry:
                    return None
                except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry, UntrustedEntry) as exc:
                    raise _Rejected(exc, reader.info.version, reader.source) from exc

        found = self._verified(key, path, read_once)
        if found is None:
            log.debug("cache miss: %s", path)
            self.count(misses=1)
            return None
        decoded, object_info, size, label = found
        seconds = time.perf_counter() - started
        self._counters.get().hit(label, size, seconds)
        if log.isEnabledFor(logging.INFO):  # what the record needs costs more than asking
            log.info("cache loaded (%s): %s, %s in %.1f ms", label, path, megabytes(size),
                     seconds * 1e3, extra=event("loaded", path))
        return decoded, object_info, size, label, path


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
        problem: JangdokError | entry.ForeignEntry
        for _ in range(_VERIFYING_READS):
            try:
                return read_once()
            except ObjectChanged as exc:  # replaced mid-read: the next read is of the new version
                problem = _let_go(exc)
                log.debug("reading %s again: %s", path, problem)
                continue
            except _Rejected as rejected:
                problem, version, source = _let_go(rejected.problem), rejected.version, rejected.source
            # Refusals by format or signature come after the checksum matched: not transit damage.
            confirmed = isinstance(problem, (UnsupportedEntry, UntrustedEntry)) or seen.get(type(problem)) == version
            if confirmed:
                break
            seen[type(problem)] = version
            log.debug("reading %s again: %s", path, problem)
        if not confirmed:  # a different version each time: writers are busy; judge nothing
            log.warning("cache entry unreadable while being rewritten, treated as a miss: %s: %s", path, problem)
            self.count(skipped=1)
        elif isinstance(problem, entry.ForeignEntry):
            self.count(skipped=1)
            log.warning("cache entry skipped (kept): %s: %s", path, problem, extra=event("skipped", path))
        elif not repair:
            log.warning("cache entry unusable (left as it is): %s: %s", path, problem)
        elif self._discard(key, path, problem, version, source) and not after_discard:
            return self._verified(key, path, read_once, after_discard=True)
        return None

    def _discard(self, key: str, path: str, problem: JangdokError, version: str, source: str = "") -> bool:
        """Delete the damaged version that was read; ``True`` if it was deleted."""
        if isinstance(problem, UnsupportedEntry):
            self.count(skipped=1)
            log.warning("cache entry skipped (kept for other readers): %s: %s", path, problem,
                        extra=event("skipped", path))
            return False
        if isinstance(problem, UntrustedEntry):
            self.count(untrusted=1, label=source)
            if not self.settings.delete_untrusted:
                log.warning("cache entry refused, not loaded (kept for whoever holds its key; "
                            "JANGDOK_DELETE_UNTRUSTED=1 deletes such entries): %s: %s", path, problem,
                            extra=event("untrusted", path))
                return False
            log.warning("cache entry refused, not loaded: %s: %s", path, problem, extra=event("untrusted", path))
        what = "untrusted" if isinstance(problem, UntrustedEntry) else "corrupt"
        try:
            # Only the version that was read: a writer may have replaced it with a good entry.
            deleted = self.store.delete(key, version=version)
        except JangdokError as exc:
            log.warning("%s cache entry could not be deleted: %s: %s (%s)", what, path, problem, exc)
            return False
        if deleted:
            if what == "corrupt":
                self.count(corrupt_deleted=1, label=source)
            where = f" ({source})" if source else ""
            log.warning("%s cache entry deleted%s: %s: %s", what, where, path, problem,
                        extra=event(f"{what}_deleted", path))
        else:
            log.warning("%s cache entry already replaced: %s: %s", what, path, problem)
        return deleted

    def _info(self, key: str, path: str, size: int, header: entry.EntryHeader | None, modified: float,
              version: str, label: str | None = None) -> EntryInfo:
        label = label or self.store.name
        if header is None:  # a legacy pickle knows nothing about itself; its file time will do
            return EntryInfo(key, path, label, size, modified, None, None, object_version=version)
        metadata = None if header.metadata is None else header.metadata_copy()
        return EntryInfo(key, path, label, size, header.created_at, metadata, header.version,
                         header.expires_at, header.serializer, header.key_id, version)

    def info(self, key: str, repair: bool = True) -> EntryInfo | None:
        """Size, creation time, metadata and store of an entry, reading only its header
        (one ranged read; a second only for metadata larger than the first read)."""
        path = self.store.path(key)

        def read_once() -> EntryInfo | None:
            head = self._read_head(key, entry.HEADER_PROBE_BYTES)
            if head is None:
                return None
            data, found = head
            needed = entry.header_size(data)
            if needed is not None and len(data) < min(needed, found.size):  # a header longer than the probe
                head = self._read_head(key, needed)
                if head is None:
                    return None
                data, found = head  # all from the second read, so from one version of the object
            try:
                header = entry.read_header(io.BytesIO(data), found.size)
                if isinstance(header, entry.EntryHeader):
                    entry.check_size(header, found.size)
                    entry.check_key(header, key)
            except (entry.ForeignEntry, CorruptEntry, UnsupportedEntry) as exc:
                raise _Rejected(exc, found.version) from exc
            parsed = header if isinstance(header, entry.EntryHeader) else None
            return self._info(key, path, found.size, parsed, found.modified, found.version)

        return self._verified(key, path, read_once, repair=repair)

    def _read_head(self, key: str, stop: int) -> tuple[bytes, ObjectInfo] | None:
        reader = self.store.authority().read(key, 0, stop)  # inspecting reads the truth, copies nothing
        if reader is None:
            return None
        with reader:
            return reader.read(), reader.info

    def verify(self, key: str, delete_damaged: bool = False) -> Verdict:
        """Check one entry's checksum (and signature, with signing keys) without deserializing
        it, so nothing of it runs. With ``delete_damaged``, a damaged entry is deleted (the
        version that was read) once a second read agrees, as loads do: damage in transit
        must never cost a good entry."""
        verdict, version = self._verify_once(key)
        if verdict.status != "damaged" or not delete_damaged:
            return verdict
        again, version_again = self._verify_once(key)
        if again.status != "damaged" or version_again != version:
            return again  # the damage was in transit, or the entry was rewritten meanwhile
        return dataclasses.replace(again, deleted=self.store.delete(key, version=version))

    def _verify_once(self, key: str) -> tuple[Verdict, str | None]:
        reader = self.store.authority().read(key)  # the truth, and no copy of every entry verified
        if reader is None:
            return Verdict(key, "missing", "no entry under this key"), None
        with reader:
            verdict = self._judge(key, reader)
        return verdict, reader.info.version

    def _judge(self, key: str, reader: Reader) -> Verdict:
        size, modified, version, label = reader.size, reader.info.modified, reader.info.version, reader.source
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
        info = self._info(key, self.store.path(key), size, header, modified, version, label or None)
        if header is None and self.trust.signing and not self.trust.allow_legacy:
            return Verdict(key, "untrusted", "a plain pickle, which cannot carry a signature; this cache "
                           "requires signed entries (JANGDOK_ALLOW_LEGACY=1 loads plain pickles)", info=info)
        if header is None:
            return Verdict(key, "legacy", "a plain pickle: no checksum to verify", info=info)
        return Verdict(key, "ok", "checksum" + (f" and signature (key {header.key_id})" if header.mac else "")
                       + " verified", info=info)


    # -- writing --------------------------------------------------------------------------

    def save(self, key: str, value: Any, metadata: Mapping[str, Any] | None = None,
             progress: entry.Progress | None = None, ttl: float | None = None) -> EntryInfo:
        """Encode and write ``value`` atomically; ``ttl`` is checked by the caller."""
        store = self.store
        path = store.path(key)
        started = time.perf_counter()
        created = self.clock()
        header, chunks = entry.encode(value, metadata, created_at=created, key=key,
                                      compression=self.settings.compression,
                                      expires_at=None if ttl is None else created + ttl,
                                      serializer=self.settings.serializer, trust=self.trust)
        total = header.entry_size
        if header.expires_at is not None:  # first: a crash in between leaves a stale marker, not a lost one
            store.write(*expiry.marker_for(store, key, header.expires_at))
        version = store.write(key, chunks, None if progress is None else lambda done: progress(done, total))
        seconds = time.perf_counter() - started
        self._counters.get().saved(store.name, total, seconds)
        if log.isEnabledFor(logging.INFO):
            log.info("cache saved (%s): %s, %s in %.1f ms", store.name, path, megabytes(total),
                     seconds * 1e3, extra=event("saved", path))
        if random.random() < CLEANUP_CHANCE:
            self._tidy(key.rpartition("/")[0] + "/" if "/" in key else "")
        return self._info(key, path, total, header, header.created_at, version)

    def _tidy(self, prefix: str) -> None:
        """Opportunistic cleanup from ``save``: a failure here must never fail the write."""
        try:
            self.store.cleanup(CLEANUP_AGE, prefix)
        except JangdokError as exc:
            log.debug("opportunistic cleanup under %r failed: %s", prefix, exc)
