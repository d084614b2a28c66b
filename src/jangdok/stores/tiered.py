"""A store composed of a shared remote store and a local folder in front of it.

Reads go through the local tier: an entry read from the remote is kept as a local copy, and
later reads are served from it. Each copy has a *validator* (a small file under the tier's
reserved folder) naming the remote version (ETag) it came from and the local file it was
written as. Within ``trust_seconds`` of its last validation a copy is served without any
request; after that, one conditional read asks the remote whether that version is still
current (S3 answers 304 without a body), so a remote change or delete is never served for
longer than the trust window. A copy whose file does not match its validator (replaced by a
process that crashed before writing the validator, or edited by hand) is never served.

Writes go to the remote first (it is the shared truth), then to the local tier. Entries
larger than ``max_entry_bytes`` stay remote only. The tier is bounded by ``max_bytes``: the
least recently used copies are evicted after each local write, under a lock file so
concurrent processes evict one at a time, each from a fresh scan of the folder.

Without a remote (it could not be opened: no credentials, unreachable), the same store is
the fallback: the local folder alone, labelled as such.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import JangdokError, StoreUnavailable
from ..filelock import FileLock
from ..location import RESERVED_FOLDER, is_reserved
from .base import UNCHANGED, Capabilities, Chunks, ObjectInfo, Reader, Store, Unchanged, iter_chunks
from .local import LocalStore

__all__ = ["TieredStore", "LOCAL_TIER", "FALLBACK"]

log = logging.getLogger("jangdok")

LOCAL_TIER = "local tier"
"""The label of reads served by the local tier, in logs and statistics."""
FALLBACK = "local (fallback)"
_VALIDATORS = RESERVED_FOLDER + "/validators/"
_EVICTION_LOCK = RESERVED_FOLDER + "/evict.lock"
# The tier's size as last counted, kept under the eviction lock, so a copy costs a small read
# and write instead of a scan of the whole folder. It can only be too high (copies dropped
# without counting), which makes the next count come sooner; a scan sets it right.
_USAGE = RESERVED_FOLDER + "/usage"
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

    def readinto(self, buffer: Any) -> int:
        return self._inner.readinto(buffer)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _blocks(reader: Reader) -> Iterator[bytearray]:
    """A reader's bytes as fresh blocks, for writing a download straight to a file."""
    while True:
        block = bytearray(_COPY_BLOCK)
        count = reader.readinto(block)
        if not count:
            return
        del block[count:]
        yield block


class TieredStore(Store):
    """``remote`` with ``local`` in front of it; or, with ``remote=None``, ``local`` alone as the
    fallback for a remote that could not be opened (``fallback_reason`` says why)."""

    def __init__(self, remote: Store | None, local: LocalStore, *, max_bytes: int | None = None,
                 max_entry_bytes: int | None = None, trust_seconds: float = 5.0,
                 fallback_reason: str | None = None) -> None:
        self.remote = remote
        self.local = local
        self.max_bytes = max_bytes
        self.max_entry_bytes: float = next(
            (bound for bound in (max_entry_bytes, max_bytes) if bound is not None), math.inf)
        self.trust_seconds = trust_seconds
        self.fallback_reason = fallback_reason
        self.location = local.location if remote is None else remote.location
        self.name = FALLBACK if remote is None else remote.name
        # Remote versions whose copy was found damaged: served straight from the remote until
        # replaced, so a reader confirms (and deletes) damage there instead of in a fresh copy.
        self._suspect: dict[str, str] = {}

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        if self.remote is None:
            return self.local.capabilities
        remote = self.remote.capabilities
        return Capabilities(shared=remote.shared, range_reads=remote.range_reads,
                            conditional_delete=remote.conditional_delete,
                            conditional_write=remote.conditional_write)

    # -- reading --------------------------------------------------------------------------

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        if self.remote is None:
            return self.local.read(key, start, stop)
        if is_reserved(key):  # coordination objects (leases) are read where they live, never copied
            return self.remote.read(key, start, stop)
        whole = start == 0 and stop is None
        copy = self._copy(key, start, stop)
        if copy is not None:
            reader, remote_version, validated_at = copy
            if time.time() - validated_at < self.trust_seconds:
                return self._serve_copy(key, reader)
            if not whole:  # header probes (stat) are not worth a revalidation of their own
                reader.close()
                return self.remote.read(key, start, stop)
            return self._revalidate(self.remote, key, reader, remote_version)
        if not whole:
            return self.remote.read(key, start, stop)
        found = self.remote.read(key)
        if found is None:
            self._drop_copy(key)
            return None
        return self._keep(self.remote, key, found)

    def _revalidate(self, remote: Store, key: str, reader: Reader, remote_version: str) -> Reader | None:
        try:
            answer = remote.read_if_changed(key, remote_version)
        except StoreUnavailable as exc:
            # Trusted for another window: each read would otherwise wait out the retry budget.
            log.warning("%s is unreachable; serving the local copy %s, which may be stale, for the next %g s (%s)",
                        self.path(key), self.local.path(key), self.trust_seconds, exc)
            self._touch(key, validated=True)
            return self._serve_copy(key, reader)
        except BaseException:
            reader.close()
            raise
        if answer is UNCHANGED:
            self._touch(key, validated=True)
            return self._serve_copy(key, reader)
        reader.close()
        if answer is None:
            self._drop_copy(key)
            return None
        assert not isinstance(answer, Unchanged)
        return self._keep(remote, key, answer)

    def _keep(self, remote: Store, key: str, found: Reader) -> Reader | None:
        """Copy a remote read into the tier and serve the copy; too large, or a version whose
        copy was damaged: serve it remotely."""
        remote_version = found.info.version
        if self._suspect.get(key) not in (None, remote_version):
            del self._suspect[key]
        if found.size > self.max_entry_bytes or not remote_version or self._suspect.get(key) == remote_version:
            self._drop_copy(key)
            return found
        try:
            with found:
                local_version = self.local.write(key, _blocks(found))
            self._write_validator(key, remote_version, local_version)
            self._evict(found.size)
        except JangdokError as exc:  # the tier's disk, or the transfer: read remotely, uncopied
            log.warning("could not keep a local copy of %s in %s (%s); reading it from %s",
                        self.path(key), self.local.location.root, exc, remote.name)
            self._drop_copy(key)
            return remote.read(key)
        reader = self.local.read(key)
        if reader is not None and reader.info.version == local_version:
            return _Served(reader, remote_version, LOCAL_TIER)
        if reader is not None:
            reader.close()
        return remote.read(key)  # another process replaced the copy meanwhile

    def _copy(self, key: str, start: int, stop: int | None) -> tuple[Reader, str, float] | None:
        """An open reader of the local copy, its remote version and when it was last
        validated; ``None`` when there is no copy its validator vouches for."""
        validator = self._read_validator(key)
        if validator is None:
            return None
        remote_version, local_version, validated_at = validator
        reader = self.local.read(key, start, stop)
        if reader is None:
            return None
        if reader.info.version != local_version:
            reader.close()
            return None
        return reader, remote_version, validated_at

    def _serve_copy(self, key: str, reader: Reader) -> Reader:
        self._touch(key, validated=False)
        return _Served(reader, _COPY_TAG + reader.info.version, LOCAL_TIER)

    def has_copy(self, key: str) -> bool:
        """Whether the local tier holds a copy of ``key`` that its validator vouches for."""
        if self.remote is None:
            return False
        copy = self._copy(key, 0, 0)
        if copy is None:
            return False
        copy[0].close()
        return True

    # -- validators -----------------------------------------------------------------------

    def _validator_path(self, key: str) -> str:
        return self.local.location.local_path(_VALIDATORS + key)

    def _read_validator(self, key: str) -> tuple[str, str, float] | None:
        path = self._validator_path(key)
        try:
            with open(path, "rb") as file:
                validated_at = os.fstat(file.fileno()).st_mtime
                fields = json.loads(file.read())
            return str(fields["remote"]), str(fields["local"]), validated_at
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing, or torn by hand: the copy is not vouched for

    def _write_validator(self, key: str, remote_version: str, local_version: str) -> None:
        text = json.dumps({"remote": remote_version, "local": local_version}).encode()
        self.local.write(_VALIDATORS + key, text)

    def _touch(self, key: str, validated: bool) -> None:
        """Record a use (the validator's access time, which LRU eviction reads) and, after a
        revalidation, the validation time (its modification time)."""
        path = self._validator_path(key)
        now = time.time_ns()
        try:
            mtime = now if validated else os.stat(path).st_mtime_ns
            os.utime(path, ns=(now, mtime))
        except OSError as exc:
            log.debug("could not record the use of %s: %s", path, exc)

    def _drop_copy(self, key: str) -> None:
        """Forget a local copy: the validator first, so no reader vouches for a copy mid-removal."""
        for doomed in (_VALIDATORS + key, key):
            try:
                self.local.delete(doomed)
            except JangdokError as exc:
                log.warning("could not remove the local copy %s: %s", self.local.path(doomed), exc)

    # -- eviction -------------------------------------------------------------------------

    def _evict(self, added: int) -> None:
        """Count a new copy of ``added`` bytes, and when the tier may be over ``max_bytes``,
        scan it and remove the least recently used copies until it fits."""
        if self.max_bytes is None:
            return
        lock = FileLock(self.local.location.local_path(_EVICTION_LOCK))
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
                if self.local.delete(found.key, version=found.version):  # not a copy replaced meanwhile
                    self.local.delete(_VALIDATORS + found.key)
                    total -= found.size
            except JangdokError as exc:
                log.warning("local tier: could not evict %s: %s", self.local.path(found.key), exc)
        log.debug("local tier %s evicted down to %d bytes", self.local.location.root, total)
        return total

    def _read_usage(self) -> int | None:
        try:
            with open(self.local.location.local_path(_USAGE), "rb") as file:
                return int(file.read())
        except (OSError, ValueError):
            return None  # never counted, or torn: count now

    def _write_usage(self, total: int) -> None:
        try:
            self.local.write(_USAGE, str(total).encode())
        except JangdokError as exc:
            log.debug("local tier: could not record its size: %s", exc)

    def _last_used(self, found: ObjectInfo) -> float:
        try:
            return os.stat(self._validator_path(found.key)).st_atime
        except OSError:
            return found.modified

    # -- writing and the rest -------------------------------------------------------------

    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        if self.remote is None:
            return self.local.write(key, data, progress)
        if is_reserved(key):
            return self.remote.write(key, data, progress)
        views = list(iter_chunks(data))  # views, not copies: the same chunks go to both tiers
        remote_version = self.remote.write(key, views, progress)
        self._suspect.pop(key, None)
        # The old copy must go whatever happens next: it would be served for the trust window.
        self._drop_copy(key)
        size = sum(view.nbytes for view in views)
        if size <= self.max_entry_bytes and remote_version:
            try:
                local_version = self.local.write(key, views)
                self._write_validator(key, remote_version, local_version)
                self._evict(size)
            except JangdokError as exc:  # the remote has the entry: a failing tier costs speed only
                log.warning("could not keep a local copy of %s in %s: %s", self.path(key),
                            self.local.location.root, exc)
        return remote_version

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        return (self.remote or self.local).write_if(key, data, version)

    def read_if_changed(self, key: str, version: str) -> Reader | Unchanged | None:
        return (self.remote or self.local).read_if_changed(key, version)

    def delete(self, key: str, version: str | None = None) -> bool:
        if self.remote is None:
            return self.local.delete(key, version)
        if version is not None and version.startswith(_COPY_TAG):
            # Damage found in a copy: remove the copy only; the remote entry may well be intact.
            validator = self._read_validator(key)
            if not self.local.delete(key, version=version[len(_COPY_TAG):]):
                return False
            self.local.delete(_VALIDATORS + key)
            if validator is not None:
                self._suspect[key] = validator[0]
            return True
        deleted = self.remote.delete(key, version)
        self._drop_copy(key)
        return deleted

    def delete_many(self, found: Iterable[ObjectInfo]) -> list[str]:
        if self.remote is None:
            return self.local.delete_many(found)
        deleted = self.remote.delete_many(found)
        for key in deleted:
            self._drop_copy(key)
        return deleted

    def stat(self, key: str) -> ObjectInfo | None:
        return (self.remote or self.local).stat(key)

    def exists(self, key: str) -> bool:
        return (self.remote or self.local).exists(key)

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
