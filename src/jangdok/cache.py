"""The cache: the public API over entries in a store.

A :class:`Cache` resolves its settings and opens its store on first use, not on construction,
so creating one (or importing jangdok) touches neither the network nor ``.env`` files. Its
methods check and normalise what enters (keys, ttl) once, then hand over to the layers below:
:class:`~jangdok.entries.Entries` (verified reads and writes), :mod:`jangdok.compute`
(compute once) and :mod:`jangdok.memoize`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from . import batch as _batch
from . import compute as _compute
from . import entry, expiry
from .bulk import SortedListing, in_order, remove
from .entries import CLEANUP_AGE, Counters, Entries, Entry, EntryInfo, TierStats, Verdict, megabytes
from .entry import Trust
from .errors import InvalidValue
from .leases import remove_stale
from .location import Location, is_reserved, normalize_key, parse_location
from .memoize import Memoized
from .memoize import memoize as _memoize
from .perprocess import PerProcess
from .settings import Settings
from .stats import Stats
from .stores import ObjectInfo, Store, open_store

__all__ = ["Cache", "Entry", "EntryInfo", "TierStats", "Stats", "PruneReport", "Verdict"]

log = logging.getLogger("jangdok")

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`Cache.prune` removed, or would remove with ``dry_run``."""

    removed: tuple[str, ...]
    """Keys of the entries removed (or to be removed)."""
    bytes_freed: int
    leftovers: int
    """Crash leftovers removed (temporary files, incomplete uploads); 0 in a dry run."""
    dry_run: bool


class _Arrivals:
    """The stores opened in this process for caches that arrived from others (unpickled), one
    per configuration. A pool's or a cluster's tasks each carry the cache they use, and each
    opening costs a client (~0.2 s of CPU), a connection and a request: the tasks a process runs
    share one, as they would share a cache made there. Up to ``LIMIT`` configurations are kept;
    an older one is let go (not closed: its caches may still use it)."""

    LIMIT = 16

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[Settings, tuple[threading.Lock, list[Store]]] = {}

    def open(self, location: Location, settings: Settings) -> Store:
        with self.lock:
            slot = self.slots.get(settings)
            if slot is None:
                slot = self.slots[settings] = (threading.Lock(), [])
                if len(self.slots) > self.LIMIT:
                    del self.slots[next(iter(self.slots))]
        lock, opened = slot
        with lock:  # one opening per configuration; the others' tasks are not held up by it
            if not opened:
                opened.append(open_store(location, settings))
            return opened[0]


_arrivals = PerProcess(_Arrivals)




class Cache:
    """A cache of Python values under one location: a local folder or ``s3://bucket/prefix/``.

    ``Cache()`` uses ``CACHE_DIR`` from the environment or ``.env`` (default ``cache``).
    Keyword arguments override any setting of :class:`~jangdok.settings.Settings`
    (``endpoint_url``, ``fallback``, ``read_timeout``, ...).

    A cache pickles (``pickle``, ``cloudpickle``, any protocol) as its resolved settings only,
    so it can be sent to a process pool's or a Dask cluster's workers, and so can its bound
    methods and the functions it memoizes. The receiving process opens its own store, clients,
    locks and local tier on first use, once for all the caches that arrive there with the same
    settings (a pool's tasks each carry theirs), and each counts its own :meth:`stats`. The settings travel
    as configured, not as the store they opened (a cache running on its fallback folder
    travels as the S3 cache it was asked to be: the receiver opens it, or falls back, itself).
    Secrets stay behind unless ``send_secrets=True``: see :meth:`Settings.completed
    <jangdok.settings.Settings.completed>` for how the receiver finds its own.
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
        self._counters = PerProcess(Counters)
        self._entries: Entries | None = None
        self._location: Location | None = None
        self._keys: dict[str, str] = {}  # keys as given -> checked and normalised (see _key)
        self._arrived = False  # unpickled: its store is the one this process opened for its settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        """A cache for already-resolved settings (no environment or ``.env`` lookups)."""
        cache = cls()
        cache._settings = settings
        return cache

    @property
    def settings(self) -> Settings:
        settings = self._settings
        if settings is None:
            settings = self._settings = Settings.resolve(**self._overrides)
        elif settings.received:  # unpickled: what did not travel is found here, once
            settings = self._settings = settings.completed()
        return settings

    def __reduce__(self) -> tuple[Any, ...]:
        # The settings as resolved here (checked where they entered), never the open store;
        # received ones not yet completed go on as they came. A subclass's own attributes go
        # as its state, and its __init__ is not called again.
        settings = self._settings or self.settings
        store = self._store
        if store is not None and store.fallback_reason is None and self.location.is_s3:
            settings = settings.with_chain_credentials()  # it opened S3: a receiver needs credentials too
        own = {name: value for name, value in vars(self).items() if name not in _CACHE_ATTRIBUTES}
        return _unpickled, (type(self), settings), own or None

    @property
    def trust(self) -> Trust:
        """The signing keys entries are signed and checked with (none: no signatures)."""
        if self._trust is None:
            self._trust = Trust.from_secrets(self.settings.signing_keys, self.settings.allow_legacy)
        return self._trust

    @property
    def location(self) -> Location:
        """The configured location (even when the cache runs on its fallback folder)."""
        if self._location is None:
            self._location = parse_location(self.settings.cache_dir)
        return self._location

    @property
    def store(self) -> Store:
        """The open store, opened (with fallback if needed) on first access."""
        if self._store is None:
            with self._locks.get():
                if self._store is None:
                    self._store = self._open()
        return self._store

    @property
    def entries(self) -> Entries:
        """Verified reads and writes in the open store, for keys already normalised."""
        entries = self._entries
        if entries is None or entries.store is not self._store:  # not opened yet, or opened again
            entries = self._entries = Entries(self.store, self.trust, self.settings, self._counters)
        return entries

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

    def _key(self, key: str) -> str:
        """A key as it enters: checked, normalised (:func:`~jangdok.location.normalize_key`), and
        checked against the location's own limits (S3 counts the prefix). Called before the
        store is touched, so a bad key costs no request, not even the store's opening.

        The check is a pure function of the key and the location, so a key that passed it is
        remembered (up to 4096): a hot key costs one lookup, and a bad key is judged anew."""
        checked = self._keys.get(key) if type(key) is str else None
        if checked is None:
            checked = normalize_key(key)
            self.location.path(checked)
            if len(self._keys) >= 4096:
                self._keys.clear()
            self._keys[key] = checked
        return checked

    def _open(self) -> Store:
        if self._arrived:
            return _arrivals.get().open(self.location, self.settings)
        return open_store(self.location, self.settings)

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, progress: entry.Progress | None = None) -> Any:
        """The value stored under ``key``, or ``default`` if it is missing or was corrupt."""
        key = self._key(key)  # before self.entries: a bad key costs no request, not even the opening
        return self.entries.load_value(key, progress, default)

    def get_entry(self, key: str, progress: entry.Progress | None = None) -> Entry | None:
        """The value and its :class:`EntryInfo`, or ``None`` on a miss.

        A damaged entry is deleted and logged at WARNING, and counts as a miss. An entry from a
        newer jangdok (or needing code this process lacks) is kept, logged, and missed. Store
        failures raise: a broken transfer never deletes anything. ``progress(done, total)`` is
        called as the bytes arrive. With the ``mmap`` setting, local entries are mapped rather
        than read: their arrays then share pages with the file.
        """
        key = self._key(key)
        return self.entries.load(key, progress)

    def get_many(self, keys: Iterable[str], progress: entry.Progress | None = None) -> dict[str, Any]:
        """The values stored under ``keys``, as ``{key: value}`` for the keys found (in the order
        given; a miss is absent), loaded ``concurrency`` at a time (the ``concurrency``
        setting, default 16) on threads that end before the call returns.

        Each key is loaded as :meth:`get_entry` loads it: verified, a damaged entry deleted and
        missed, counted in :meth:`stats` and logged. Every key is checked first, so a bad one
        raises ``InvalidKey`` before any request; keys that name one entry (``김치`` typed in
        NFC and in NFD) are read once, and each is in the result. A store failure on some keys
        raises :class:`~jangdok.errors.BatchError` once the others are done: its ``results``
        holds the values found for them, its ``errors`` each failed key's error.
        ``progress(done, total)`` follows the bytes of the whole batch, from the batch's
        threads, one call at a time; ``total`` counts the entries begun so far, so it grows
        until the last one has begun.
        """
        return self._load_many(keys, progress, lambda found: found.value)

    def get_entries(self, keys: Iterable[str], progress: entry.Progress | None = None) -> dict[str, Entry]:
        """As :meth:`get_many`, with each value's :class:`EntryInfo`: ``{key: Entry}`` for the
        keys found (a :class:`~jangdok.errors.BatchError`'s ``results`` then holds entries)."""
        return self._load_many(keys, progress, lambda found: found)

    def _load_many(self, keys: Iterable[str], progress: entry.Progress | None,
                   pick: Callable[[Entry], T]) -> dict[str, T]:
        named = _batch.named(keys, self._key)
        if not named:
            return {}
        found, failed = _batch.load(self.entries, named, self.settings.concurrency, progress)
        return _batch.settle({key: pick(got) for key, got in found.items()}, failed, "loading", len(named))

    def stats(self) -> Stats:
        """Hits, misses, bytes and seconds read and written by this process, per store
        (``"S3"``, ``"local"``, ``"local (fallback)"``). A forked child starts from zero.
        Workers' stats pickle, add up and subtract (:class:`~jangdok.stats.Stats`): a task
        returns ``cache.stats() - before``, and ``sum(gathered)`` is the total."""
        counters = self._counters.get()
        with counters.lock:
            return Stats.of(counters.tiers)

    def stat(self, key: str, repair: bool = True) -> EntryInfo | None:
        """Size, creation time, metadata and store of an entry, reading only its header
        (one ranged read; a second only for metadata larger than the first read)."""
        key = self._key(key)
        return self.entries.info(key, repair)

    def verify(self, key: str, delete_damaged: bool = False) -> Verdict:
        """Check one entry's checksum (and signature, with signing keys) without deserializing
        it, so nothing of it runs. With ``delete_damaged``, a damaged entry is deleted (the
        version that was read) once a second read agrees, as loads do: damage in transit
        must never cost a good entry."""
        key = self._key(key)
        return self.entries.verify(key, delete_damaged)

    def exists(self, key: str) -> bool:
        """Whether an entry is stored under ``key`` (not whether it is intact)."""
        key = self._key(key)
        return self.store.exists(key)

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
        key = self._key(key)
        return self.entries.save(key, value, metadata, progress, self._ttl(key, ttl))

    def put_many(self, items: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                 progress: entry.Progress | None = None, ttl: float | None = None) -> dict[str, EntryInfo]:
        """Store each value of ``items`` under its key, as :meth:`put` does (atomically, with
        ``metadata`` and ``ttl`` for all of them), ``concurrency`` at a time; the
        :class:`EntryInfo` of each, by key, in the order given.

        Every key is checked first (``InvalidKey`` before anything is written, also for two
        keys that name one entry). A key that fails (a store failure, a value that cannot be
        stored) raises :class:`~jangdok.errors.BatchError` once the others are done: its
        ``results`` holds the entries saved, its ``errors`` each failed key's error.
        ``progress(done, total)`` follows the bytes of the whole batch, as in :meth:`get_many`.
        """
        named = _batch.named(items, self._key)
        if not named:
            return {}
        ttl = self._ttl(next(iter(named.values())), ttl)
        saved, failed = _batch.save(self.entries, named, items, metadata, ttl, self.settings.concurrency, progress)
        return _batch.settle(saved, failed, "saving", len(named))

    def _ttl(self, key: str, ttl: float | None) -> float | None:
        ttl = self.settings.ttl if ttl is None else ttl
        if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
            raise InvalidValue(f"ttl for key {key!r} must be a positive number of seconds, got {ttl!r}")
        return ttl

    def get_or_compute(self, key: str, compute: Callable[[], T], metadata: Mapping[str, Any] | None = None,
                       ttl: float | None = None, timeout: float | None = None,
                       progress: entry.Progress | None = None,
                       accept: Callable[[EntryInfo], bool] | None = None, missed: bool = False) -> T:
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
        ``missed=True`` tells that the caller has just missed ``key`` (in :meth:`get_many`):
        the first look, a request that would count a second miss, is skipped. An entry saved
        by another process since is still found before anything is computed.
        """
        key = self._key(key)
        wait = self.settings.wait_timeout if timeout is None else timeout
        return _compute.get_or_compute(self.entries, key, compute, metadata, self._ttl(key, ttl), wait,
                                       progress, accept, missed)

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

    def delete(self, key: str) -> bool:
        """Remove an entry; ``True`` if there was one."""
        key = self._key(key)
        return self.store.delete(key)

    def prune(self, older_than: float | None = None, max_bytes: int | None = None,
              dry_run: bool = False, progress: Callable[[int, int | None], None] | None = None) -> PruneReport:
        """Remove expired entries, entries written more than ``older_than`` seconds ago, then
        the oldest entries until the rest fit in ``max_bytes``; and crash leftovers as
        :meth:`cleanup` does. ``dry_run`` reports without removing anything.

        Each entry is removed only in the version that was listed, so one rewritten meanwhile
        by another process stays. Expired entries are found by their expiry markers (see
        :mod:`jangdok.expiry`): a listing, plus one header read per entry whose marker is due,
        so a cache without TTLs costs a listing and nothing per entry. On a bucket, a lifecycle
        rule expiring objects by age does the ``older_than`` part without any client.

        The entries are listed once and judged as they come, and removed in batches as they
        are judged (S3: 1000 per request where the server keeps each to its listed version,
        else ``concurrency`` versioned deletes at a time), so memory holds a page of the
        listing, never all of it; for ``max_bytes`` the entries kept are sorted by age in
        bounded memory (:class:`~jangdok.bulk.SortedListing`). Only the report's list of keys
        grows, with the entries removed. ``progress(done, None)`` follows the entries examined
        while the listing runs (its total is not known until it ends), and ``progress(done,
        done)`` comes once at its end.
        """
        store, workers = self.store, self.settings.concurrency
        now = self.entries.clock()
        expired, stale_markers = self._expired(now)
        removed: list[str] = []
        freed = 0
        examined = 0
        kept_bytes = 0
        with SortedListing(key=lambda found: found.modified) as kept:  # the least recently written first

            def judged() -> Iterator[ObjectInfo]:
                """The listed entries the rules doom; the others go to ``kept``, if a size bound needs them."""
                nonlocal examined, kept_bytes
                for found in store.list():
                    if is_reserved(found.key):
                        continue
                    examined += 1
                    if progress is not None:
                        progress(examined, None)
                    # Expired only in the version judged: one saved again since is another entry.
                    verdict = expired.get(found.key)
                    if (older_than is not None and now - found.modified > older_than) or (
                            verdict is not None and verdict[0] == found.version):
                        yield found
                    elif max_bytes is not None:
                        kept.add(found)
                        kept_bytes += found.size

            def oldest_beyond_bound() -> Iterator[ObjectInfo]:
                excess = kept_bytes - (max_bytes or 0)  # nothing was kept without a bound
                for found in kept:
                    if excess <= 0:
                        return
                    excess -= found.size
                    yield found

            # The entries the rules doom, as the listing brings them; then, once it has ended
            # and the bytes kept are known, the oldest of those kept beyond the bound.
            for doomed in (judged(), oldest_beyond_bound()):
                outcomes = ((found, True) for found in doomed) if dry_run else remove(store, doomed, workers)
                with closing(outcomes):
                    for found, gone in outcomes:
                        if gone:
                            removed.append(found.key)
                            freed += found.size
                            # An expired entry's markers go with it; one kept (rewritten
                            # meanwhile) keeps them for the next prune.
                            stale_markers += expired.get(found.key, ("", []))[1]
        if progress is not None:
            progress(examined, examined)
        if dry_run:
            return PruneReport(tuple(removed), freed, 0, True)
        for _ in remove(store, stale_markers, workers):
            pass
        leftovers = self.cleanup(CLEANUP_AGE)
        log.info("prune removed %d entries (%s) and %d leftover(s) under %s", len(removed), megabytes(freed),
                 leftovers, self.store.location.url)
        return PruneReport(tuple(removed), freed, leftovers, False)

    def _expired(self, now: float) -> tuple[dict[str, tuple[str, list[ObjectInfo]]], list[ObjectInfo]]:
        """The keys whose entries have expired, with the version judged and their due markers;
        and the due markers that are stale. The entries' headers are read ``concurrency`` at a
        time."""
        due: dict[str, list[ObjectInfo]] = {}
        stale: list[ObjectInfo] = []
        for found in expiry.due_markers(self.store, now):
            if found.key is None:
                stale.append(found.marker)
            else:
                due.setdefault(found.key, []).append(found.marker)
        entries = self.entries

        def judge(key: str) -> tuple[str, EntryInfo | None]:
            return key, entries.info(key, repair=False)  # prune judges expiry; reads judge damage

        expired: dict[str, tuple[str, list[ObjectInfo]]] = {}
        with closing(in_order(judge, due, self.settings.concurrency)) as judged:
            for key, info in judged:
                if info is not None and info.expires_at is not None and info.expires_at <= now:
                    expired[key] = (info.object_version, due[key])
                else:  # gone, or rewritten without a TTL or with a later one (and a marker not yet due)
                    stale += due[key]
        return expired, stale

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
        """Close the store (a cache that arrived from another process lets go of the store it
        shares with the others that arrived with its settings). The next use opens it again."""
        if self._store is not None:
            if not self._arrived:
                self._store.close()
            self._store = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._overrides.get("cache_dir") or (self._settings.cache_dir if self._settings else "CACHE_DIR")
        return f"<Cache {where}{' (fallback)' if self.fallback_reason else ''}>"


_CACHE_ATTRIBUTES = frozenset(vars(Cache()))


def _unpickled(kind: type[Cache], settings: Settings) -> Cache:
    """A cache arriving from a pickle. With settings that travelled (not a copy made in this
    process, whose settings are its own), it shares this process's store for them."""
    cache = kind.__new__(kind)
    Cache.__init__(cache)
    cache._settings = settings
    cache._arrived = settings.received
    return cache
