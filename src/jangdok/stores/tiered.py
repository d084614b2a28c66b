"""A store composed of a shared remote store and a local folder in front of it.

Reads go through the local tier: an entry read from the remote is kept as a local copy, and
later reads are served from it. Each copy has a *validator* (a small file under the tier's
reserved folder) naming the remote version (ETag) it came from, the local file it was written
as, and when the remote was asked: the moment the request that read (or wrote) that version
was sent, so a slow download cannot stretch the window. Within ``trust_seconds`` of that a
copy is served without any request; after it, one conditional read asks the remote whether
that version is still current (S3 answers 304 without a body), so a remote change or delete
is never served for longer than the trust window. A validation time in the future (the clock
was stepped back) is never trusted. A copy whose file does not match its validator (replaced
by a process that crashed before writing the validator, or edited by hand) is never served,
and a copy the remote contradicts (a ``stat`` answering another version) is dropped.

Writes go to the remote first (it is the shared truth), then to the local tier. Entries
larger than ``max_entry_bytes`` stay remote only. The tier is bounded by ``max_bytes``: the
least recently used copies are evicted after each local write, under a lock file so
concurrent processes evict one at a time, each from a fresh scan of the folder.

When the remote is unreachable (at opening, or later), copies are served whatever their age,
with one WARNING, and the remote is asked again after each trust window; reads of entries
without a copy still go to the remote, and fail if it is down.

Without a remote (it could not be opened: no credentials), the same store is the fallback:
the local folder alone, labelled as such.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

from ..errors import JangdokError, StoreUnavailable
from ..filelock import FileLock
from ..location import RESERVED_FOLDER, Location, is_reserved
from ..perprocess import PerProcess
from .base import UNCHANGED, Capabilities, Chunks, ObjectInfo, Reader, Store, Unchanged, iter_chunks
from .local import LocalStore

__all__ = ["TieredStore", "LocalTier", "LOCAL_TIER", "FALLBACK"]

log = logging.getLogger("jangdok")
T = TypeVar("T")

LOCAL_TIER = "local tier"
"""The label of reads served by the local tier, in logs and statistics."""
FALLBACK = "local (fallback)"
_VALIDATORS = RESERVED_FOLDER + "/validators/"
_EVICTION_LOCK = RESERVED_FOLDER + "/evict.lock"
# The tier's size as last counted, kept under the eviction lock, so a copy costs a small read
# and write instead of a scan of the whole folder. It can only be too high (copies dropped
# without counting), which makes the next count come sooner; a scan sets it right.
_USAGE = RESERVED_FOLDER + "/usage"
# Validators and the usage file are a few hundred bytes; a larger one was not written by us.
_SMALL_FILE = 4096
# A copy this process just downloaded is the remote's bytes: its damage is the remote's.
# A copy found in the tier may have been damaged locally; its version carries this tag, so
# deleting it removes only the copy.
_COPY_TAG = "local-copy:"
_COPY_BLOCK = 8 << 20
_EVICT_TO = 0.9


class _Served(Reader):
    """A reader relabelled with the version and tier a composed store answers for."""

    def __init__(self, inner: Reader, version: str, source: str) -> None:
        super().__init__()
        self._inner = inner
        self.size = inner.size
        info = inner.info
        self.info = ObjectInfo(info.key, info.size, info.modified, version)
        self.source = source
        self.fill = inner.fill

    def readinto(self, buffer: Any) -> int:
        return self._inner.readinto(buffer)

    def close(self) -> None:
        self._inner.close()
        super().close()


class _Validator(NamedTuple):
    remote: str
    """The remote version the copy came from."""
    local: str
    """The copy's own version (its file's identity)."""
    validated_at: float
    """When the remote was asked and answered ``remote``: the time its request was sent."""
    version: str
    """The validator file's own version, so that dropping it never drops a newer one."""


def _blocks(reader: Reader) -> Iterator[bytearray]:
    """A reader's bytes as fresh blocks, for writing a download straight to a file."""
    while True:
        block = bytearray(_COPY_BLOCK)
        count = reader.readinto(block)
        if not count:
            return
        del block[count:]
        yield block


def _small(store: LocalStore, key: str) -> tuple[bytes, str] | None:
    """A small file of the tier's own (a validator, the usage count) and its version, read
    through the store; ``None`` if it is missing, unreadable or too large to be ours."""
    try:
        reader = store.read(key, 0, _SMALL_FILE + 1)
        if reader is None:
            return None
        with reader:
            data, version = reader.read(), reader.info.version
    except JangdokError as exc:
        log.debug("local tier: cannot read %s: %s", store.path(key), exc)
        return None
    return (data, version) if len(data) <= _SMALL_FILE else None


class TieredStore(Store):
    """``remote`` with ``local`` in front of it; or, with ``remote=None``, ``local`` alone as the
    fallback for a remote that could not be opened (``fallback_reason`` says why).

    ``unreachable``: the remote could not be reached when it was opened (the copies are served
    from the start). ``clock`` gives validation times (seconds since the epoch): every process
    sharing the tier must read the same clock, so it is the system's unless a test says."""

    def __init__(self, remote: Store | None, local: LocalStore, *, max_bytes: int | None = None,
                 max_entry_bytes: int | None = None, trust_seconds: float = 5.0,
                 fallback_reason: str | None = None, unreachable: StoreUnavailable | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.remote = remote
        self.local = local
        self.max_bytes = max_bytes
        self.max_entry_bytes: float = next(
            (bound for bound in (max_entry_bytes, max_bytes) if bound is not None), math.inf)
        self.trust_seconds = trust_seconds
        self.fallback_reason = fallback_reason
        self.location = local.location if remote is None else remote.location
        self.name = FALLBACK if remote is None else remote.name
        self._clock = clock
        # Remote versions whose copy was found damaged: served straight from the remote until
        # replaced, so a reader confirms (and deletes) damage there instead of in a fresh copy.
        self._suspect: dict[str, str] = {}
        # An outage: since when the remote is down (None: it is not), and when to ask it again.
        # Copies are served without asking until then.
        self._outage = PerProcess(threading.Lock)  # a lock held by a thread at fork() stays held
        self._down_since: float | None = None
        self._ask_again_at = 0.0
        if unreachable is not None:
            self._unreachable(unreachable)

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        # The remote's own object, so its probed answers stay lazy (a read probes nothing).
        # Its mapping is False (S3): reads are served by the tier, never mapped from the remote.
        return (self.remote or self.local).capabilities

    def authority(self) -> Store:
        """The remote (the shared truth), or the fallback folder where there is none."""
        return self.remote if self.remote is not None else self.local

    def local_tier(self) -> LocalTier | None:
        return None if self.remote is None else LocalTier(self)

    # -- the remote, and its outages ------------------------------------------------------

    def _ask(self, request: Callable[[], T]) -> T:
        """A request to the remote, noting whether it could be reached."""
        try:
            answer = request()
        except StoreUnavailable as exc:
            self._unreachable(exc)
            raise
        if self._down_since is not None:
            with self._outage.get():
                if self._down_since is not None:
                    self._down_since = None
                    log.info("%s is reachable again; local copies are checked with it again", self.location.url)
        return answer

    def _unreachable(self, exc: StoreUnavailable) -> None:
        with self._outage.get():
            newly = self._down_since is None
            now = self._clock()
            self._down_since = now if self._down_since is None else min(now, self._down_since)
            self._ask_again_at = now + self.trust_seconds
        if newly:
            log.warning("%s cache %s is unreachable (%s); serving the copies in the local tier %s, which may be "
                        "stale, and asking it again every %g s (a read without a local copy still asks it)",
                        self.name, self.location.url, exc, self.local.location.root, self.trust_seconds,
                        extra={"jangdok_event": "unreachable", "jangdok_path": self.location.url})

    def _waiting_out_outage(self) -> bool:
        """Whether the remote is down and not due to be asked yet: copies are served as they are.
        (A clock stepped back to before the outage began asks at once.)"""
        since = self._down_since
        return since is not None and since <= self._clock() < self._ask_again_at

    # -- reading --------------------------------------------------------------------------

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        remote = self.remote
        if remote is None:
            return self.local.read(key, start, stop)
        if is_reserved(key):  # coordination objects (leases) are read where they live, never copied
            return self._ask(lambda: remote.read(key, start, stop))
        whole = start == 0 and stop is None
        copy = self._copy(key, start, stop)
        if copy is not None:
            reader, validator = copy
            if self._trusted(validator) or self._waiting_out_outage():
                return self._serve_copy(key, reader)
            if whole:
                return self._revalidate(remote, key, reader, validator)
            try:  # a part of an entry (a header) is not worth a revalidation of its own
                found = self._ask(lambda: remote.read(key, start, stop))
            except StoreUnavailable:
                return self._serve_copy(key, reader)
            except BaseException:
                reader.close()
                raise
            reader.close()
            return found
        if not whole:
            return self._ask(lambda: remote.read(key, start, stop))
        requested = self._clock()
        found = self._ask(lambda: remote.read(key))
        if found is None:
            self._drop_copy(key)
            return None
        return self._keep(remote, key, found, requested)

    def _trusted(self, validator: _Validator) -> bool:
        """Validated within the trust window, and not in the future: a clock stepped back must
        not extend a copy's trust until it catches up."""
        return 0 <= self._clock() - validator.validated_at < self.trust_seconds

    def _revalidate(self, remote: Store, key: str, reader: Reader, validator: _Validator) -> Reader | None:
        requested = self._clock()
        try:
            answer = self._ask(lambda: remote.read_if_changed(key, validator.remote))
        except StoreUnavailable:  # said once by _ask; the copy is all there is
            log.debug("serving the local copy %s, which may be stale, while %s is unreachable",
                      self.local.path(key), self.location.url)
            return self._serve_copy(key, reader)
        except BaseException:
            reader.close()
            raise
        if answer is UNCHANGED:
            self._write_validator(key, validator.remote, validator.local, requested)
            return self._serve_copy(key, reader)
        reader.close()
        if answer is None:
            self._drop_copy(key)
            return None
        assert not isinstance(answer, Unchanged)
        return self._keep(remote, key, answer, requested)

    def _keep(self, remote: Store, key: str, found: Reader, requested: float) -> Reader | None:
        """Copy a remote read (requested at ``requested``) into the tier and serve the copy; too
        large, or a version whose copy was damaged: serve it remotely."""
        remote_version = found.info.version
        if self._suspect.get(key) not in (None, remote_version):
            self._suspect.pop(key, None)  # another thread may be clearing it too
        if found.size > self.max_entry_bytes or not remote_version or self._suspect.get(key) == remote_version:
            self._drop_copy(key)
            return found
        try:
            with found:
                local_version = self.local.write(key, _blocks(found))
            self._write_validator(key, remote_version, local_version, requested)
            self._evict(found.size)
        except JangdokError as exc:  # the tier's disk, or the transfer: read remotely, uncopied
            log.warning("could not keep a local copy of %s in %s (%s); reading it from %s",
                        self.path(key), self.local.location.root, exc, remote.name)
            self._drop_copy(key)
            return self._ask(lambda: remote.read(key))
        reader = self.local.read(key)
        if reader is not None and reader.info.version == local_version:
            return _Served(reader, remote_version, LOCAL_TIER)
        if reader is not None:
            reader.close()
        return self._ask(lambda: remote.read(key))  # another process replaced the copy meanwhile

    def _copy(self, key: str, start: int, stop: int | None) -> tuple[Reader, _Validator] | None:
        """An open reader of the local copy and its validator; ``None`` when there is no copy
        its validator vouches for."""
        validator = self._read_validator(key)
        if validator is None:
            return None
        reader = self.local.read(key, start, stop)
        if reader is None:
            return None
        if reader.info.version != validator.local:
            reader.close()
            return None
        return reader, validator

    def _serve_copy(self, key: str, reader: Reader) -> Reader:
        self._touch(key)
        return _Served(reader, _COPY_TAG + reader.info.version, LOCAL_TIER)

    def _holds(self, key: str) -> bool:
        """Whether the local tier holds a copy of ``key`` that its validator vouches for."""
        copy = self._copy(key, 0, 0)
        if copy is None:
            return False
        copy[0].close()
        return True

    # -- validators -----------------------------------------------------------------------

    def _read_validator(self, key: str) -> _Validator | None:
        found = _small(self.local, _VALIDATORS + key)
        if found is None:
            return None
        try:
            fields = json.loads(found[0])
            # A validator of an older version kept its time as the file's: asked again at once.
            validated_at = float(fields.get("validated_at", 0.0))
            validator = _Validator(fields["remote"], fields["local"], validated_at, found[1])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # torn by hand: the copy is not vouched for
        if not (isinstance(validator.remote, str) and isinstance(validator.local, str)
                and math.isfinite(validator.validated_at)):
            return None
        return validator

    def _write_validator(self, key: str, remote_version: str, local_version: str, validated_at: float) -> None:
        text = json.dumps({"remote": remote_version, "local": local_version, "validated_at": validated_at})
        self.local.write(_VALIDATORS + key, text.encode())

    def _touch(self, key: str) -> None:
        """Record a use in the validator's access time, which LRU eviction reads."""
        try:
            self.local.touch(_VALIDATORS + key)
        except JangdokError as exc:
            log.debug("could not record the use of %s: %s", self.local.path(key), exc)

    def _drop_copy(self, key: str, validator: _Validator | None = None) -> None:
        """Forget a local copy: the validator first, so no reader vouches for a copy mid-removal.
        With ``validator``, only that validator and the copy it vouched for."""
        if validator is not None:
            try:
                if self.local.delete(_VALIDATORS + key, version=validator.version):
                    self.local.delete(key, version=validator.local)
            except JangdokError as exc:
                log.warning("could not remove the local copy %s: %s", self.local.path(key), exc)
            return
        for doomed in (_VALIDATORS + key, key):
            try:
                self.local.delete(doomed)
            except JangdokError as exc:
                log.warning("could not remove the local copy %s: %s", self.local.path(doomed), exc)

    def _forget_if_contradicted(self, key: str, found: ObjectInfo | None) -> None:
        """Drop a copy of a version the remote just said is not current (or of a deleted
        entry): whoever asked knows better now, and must not be served it for the rest of
        its trust window."""
        validator = self._read_validator(key)
        if validator is not None and (found is None or found.version != validator.remote):
            self._drop_copy(key, validator)

    # -- eviction -------------------------------------------------------------------------

    def _evict(self, added: int) -> None:
        """Count a new copy of ``added`` bytes, and when the tier may be over ``max_bytes``,
        scan it and remove the least recently used copies until it fits."""
        if self.max_bytes is None:
            return
        lock = FileLock(self.local.location.root, _EVICTION_LOCK)
        try:
            lock.acquire()
        except OSError as exc:
            log.warning("local tier %s: cannot lock for eviction (%s)", self.local.location.root, exc)
            return
        try:
            usage = self._read_usage()
            if usage is not None and usage + added <= self.max_bytes:
                self._write_usage(usage + added)
                return
            # Down to 90%, so that the next copies fit without another scan each.
            self._write_usage(self._shrink(int(self.max_bytes * _EVICT_TO)))
        finally:
            lock.release()

    def _shrink(self, bound: int) -> int:
        """Scan the tier, evict least recently used copies down to ``bound`` bytes; the new total."""
        copies = [found for found in self.local.list() if not is_reserved(found.key)]
        total = sum(found.size for found in copies)
        if total <= bound:
            return total
        copies.sort(key=self._last_used)
        for found in copies:
            if total <= bound:
                break
            try:
                if self._evict_copy(found):
                    total -= found.size
            except JangdokError as exc:
                log.warning("local tier: could not evict %s: %s", self.local.path(found.key), exc)
        log.debug("local tier %s evicted down to %d bytes", self.local.location.root, total)
        return total

    def _evict_copy(self, found: ObjectInfo) -> bool:
        """Remove a copy in the version listed, and the validator read before it, in that
        validator's version: other threads and processes copy entries (without the lock) while
        a scan evicts, and a copy and validator written since the listing must both stay."""
        validator = self._read_validator(found.key)
        if not self.local.delete(found.key, version=found.version):
            return False
        if validator is not None:
            self.local.delete(_VALIDATORS + found.key, version=validator.version)
        return True

    def _read_usage(self) -> int | None:
        found = _small(self.local, _USAGE)
        try:
            return None if found is None else int(found[0])
        except ValueError:
            return None  # torn: count now

    def _write_usage(self, total: int) -> None:
        try:
            self.local.write(_USAGE, str(total).encode())
        except JangdokError as exc:
            log.debug("local tier: could not record its size: %s", exc)

    def _last_used(self, found: ObjectInfo) -> float:
        try:
            used = self.local.last_used(_VALIDATORS + found.key)
        except JangdokError:
            used = None
        return found.modified if used is None else used

    # -- writing and the rest -------------------------------------------------------------

    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        remote = self.remote
        if remote is None:
            return self.local.write(key, data, progress)
        if is_reserved(key):
            return self._ask(lambda: remote.write(key, data, progress))
        views = list(iter_chunks(data))  # views, not copies: the same chunks go to both tiers
        requested = self._clock()
        remote_version = self._ask(lambda: remote.write(key, views, progress))
        self._suspect.pop(key, None)
        # The old copy must go whatever happens next: it would be served for the trust window.
        self._drop_copy(key)
        size = sum(view.nbytes for view in views)
        if size <= self.max_entry_bytes and remote_version:
            try:
                local_version = self.local.write(key, views)
                self._write_validator(key, remote_version, local_version, requested)
                self._evict(size)
            except JangdokError as exc:  # the remote has the entry: a failing tier costs speed only
                log.warning("could not keep a local copy of %s in %s: %s", self.path(key),
                            self.local.location.root, exc)
        return remote_version

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        remote = self.remote
        if remote is None:
            return self.local.write_if(key, data, version)
        return self._ask(lambda: remote.write_if(key, data, version))

    def read_if_changed(self, key: str, version: str) -> Reader | Unchanged | None:
        remote = self.remote
        if remote is None:
            return self.local.read_if_changed(key, version)
        return self._ask(lambda: remote.read_if_changed(key, version))

    def delete(self, key: str, version: str | None = None) -> bool:
        remote = self.remote
        if remote is None:
            return self.local.delete(key, version)
        if version is not None and version.startswith(_COPY_TAG):
            # Damage found in a copy: remove the copy only; the remote entry may well be intact.
            validator = self._read_validator(key)
            if not self.local.delete(key, version=version[len(_COPY_TAG):]):
                return False
            self.local.delete(_VALIDATORS + key)
            if validator is not None:
                self._suspect[key] = validator.remote
            return True
        deleted = self._ask(lambda: remote.delete(key, version))
        if not is_reserved(key):
            self._drop_copy(key)
        return deleted

    def delete_many(self, found: Iterable[ObjectInfo]) -> list[str]:
        remote = self.remote
        if remote is None:
            return self.local.delete_many(found)
        deleted = self._ask(lambda: remote.delete_many(found))
        for key in deleted:
            if not is_reserved(key):
                self._drop_copy(key)
        return deleted

    def stat(self, key: str) -> ObjectInfo | None:
        remote = self.remote
        if remote is None:
            return self.local.stat(key)
        found = self._ask(lambda: remote.stat(key))
        if not is_reserved(key):
            self._forget_if_contradicted(key, found)
        return found

    def exists(self, key: str) -> bool:
        remote = self.remote
        if remote is None:
            return self.local.exists(key)
        return self._ask(lambda: remote.exists(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return (self.remote or self.local).list(prefix)

    def map(self, key: str) -> tuple[memoryview, ObjectInfo] | None:
        if self.remote is None:
            return self.local.map(key)
        return super().map(key)

    def path(self, key: str) -> str:
        return (self.remote or self.local).path(key)

    def cleanup(self, older_than: float, prefix: str = "") -> int:
        removed = self.local.cleanup(older_than, prefix)
        if self.remote is not None:
            removed += self.remote.cleanup(older_than, prefix)
        return removed

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
        self.local.close()


class LocalTier:
    """What a composed store keeps locally, for inspecting it (the ``jangdok`` command): where,
    within which bound, which copies, and whether a key has one its validator vouches for."""

    def __init__(self, store: TieredStore) -> None:
        self._store = store

    @property
    def location(self) -> Location:
        return self._store.local.location

    @property
    def max_bytes(self) -> int | None:
        return self._store.max_bytes

    def list(self) -> Iterator[ObjectInfo]:
        """The copies (not the tier's own files)."""
        return (found for found in self._store.local.list() if not is_reserved(found.key))

    def holds(self, key: str) -> bool:
        return self._store._holds(key)
