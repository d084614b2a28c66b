"""Leases: who computes an entry when several processes or machines miss it at once.

Two kinds, chosen by what the store is:

- :class:`FileLease` for a folder only this machine sees: a lock file under the cache's
  reserved folder, held with ``flock``, so the OS releases it the instant its holder dies.
- :class:`ObjectLease` for a shared store (S3): a small object created with a conditional
  write (``If-None-Match: *``), so exactly one of the processes racing for it succeeds. It
  holds its owner, host and lifetime; the owner renews it (a write conditional on its ETag)
  every third of its lifetime. A waiter that sees the *same* version of a lease for a whole
  lifetime knows the owner stopped renewing, and takes it over with a write conditional on
  that version, so two waiters can never both take it. Expiry is judged on the waiter's own
  monotonic clock from when it first saw that version, never by comparing clocks between
  machines. Where the store does not know whether its server enforces the conditions (the
  probe could not run), each write is checked first and still sent conditionally; where the
  server is known to ignore them (a WARNING says so), the check is all there is.

An owner whose value could not be saved leaves its lease *marked unsaved* instead of removing
it: its waiters would otherwise take turns computing a value that is never stored. Whoever
meets the mark computes at once, without a lease, and the first of them to save removes it.

Lease and lock names are the key's own under ``.jangdok/leases/`` and ``.jangdok/locks/``, so a
listing shows what is being computed; a key too long to carry the extra folder (or suffix) gets
a name made of its hash, under a folder no key can name.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .errors import AccessDenied, InvalidKey, JangdokError, StoreUnavailable
from .filelock import FileLock
from .location import RESERVED_FOLDER
from .settings import MAX_LEASE_SECONDS
from .stores import ObjectInfo, Store

__all__ = ["Claim", "Lease", "FileLease", "ObjectLease", "lease_for", "remove_stale"]

log = logging.getLogger("jangdok")

_LEASES = RESERVED_FOLDER + "/leases/"
_LOCKS = RESERVED_FOLDER + "/locks/"
_LOCK_SUFFIX = ".lock"
# Hashed names live in a folder named like the reserved one: no user key can start with it, so
# a hashed name never meets the plain name of another key.
_HASHED = RESERVED_FOLDER + "/"
# The cleaner writes a marker here to read the server's clock (see remove_stale): among the
# leases, so one listing finds both, and a marker a killed cleaner left goes as a stale lease.
_CLOCK = _LEASES + _HASHED + "clock-"
_STALE_LIFETIMES = 10
# A lease body is a few hundred bytes; anything much larger was not written by a lease.
_MAX_LEASE_BYTES = 64 * 1024
# Why a value could not be saved, as a mark carries it: enough to say it, never a large body.
_REASON_CHARS = 500
# A lock file that cannot be used because of what is in its place (a FIFO, a socket, a link, a
# file where a folder goes) or where it goes (read-only): computed without coordinating.
_UNUSABLE_LOCK = {errno.EROFS, errno.EINVAL, errno.ELOOP, errno.ENOTDIR, errno.ENXIO}


class Claim(enum.Enum):
    """What an attempt to take a lease found."""

    OWNER = "owner"
    """This process holds the lease: it computes."""
    WAITER = "waiter"
    """Another process holds it: wait for its entry."""
    UNCOORDINATED = "uncoordinated"
    """No lease can be had here (no permission, a read-only folder): compute without one.
    ``Lease.reason`` says why."""
    UNSAVED = "unsaved"
    """The last owner computed the value but could not save it, and marked the lease so:
    compute at once, without a lease, rather than wait for a value that is never stored."""


def _owner() -> dict[str, Any]:
    return {"owner": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            "host": socket.gethostname(), "pid": os.getpid()}


def _name(fits: Callable[[str], object], folder: str, key: str, suffix: str = "") -> str | None:
    """The key's name under ``folder``: readable when the store can hold it, else its hash;
    ``None`` if not even that fits (an S3 prefix of nearly 1024 bytes)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    for name in (folder + key + suffix, folder + _HASHED + digest + suffix):
        try:
            fits(name)
        except InvalidKey:
            continue
        return name
    return None


def _read_lease(store: Store, name: str) -> tuple[str, dict[str, Any]] | None:
    """A lease's version and fields (empty if torn or foreign), or None if there is none."""
    reader = store.read(name, 0, _MAX_LEASE_BYTES + 1)
    if reader is None:
        return None
    with reader:
        version, body = reader.info.version, reader.read()  # all of it: a torn read is no lease
    try:
        fields = json.loads(body) if len(body) <= _MAX_LEASE_BYTES else None
    except ValueError:
        fields = None
    return version, fields if isinstance(fields, dict) else {}


def _lifetime(fields: dict[str, Any]) -> float:
    """The lifetime a lease records (its owner renews it every third of that); 0 if none can
    be read, or if it is one no jangdok writes (a planted lease must not hold a key for ever)."""
    try:
        lifetime = float(fields["lease_seconds"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return lifetime if math.isfinite(lifetime) and 0 < lifetime <= MAX_LEASE_SECONDS else 0.0


def _unsaved_reason(fields: dict[str, Any], holder: str) -> str:
    return f"{holder} computed it but could not save it ({fields.get('unsaved') or 'unknown reason'})"


class Lease:
    """The right to compute one key. ``try_acquire`` never blocks; ``holder`` describes who
    had it at the last attempt, for waiting messages; ``reason`` why a claim was
    :attr:`Claim.UNCOORDINATED` or :attr:`Claim.UNSAVED`."""

    path: str
    holder: str = "an unknown process"
    reason: str = ""
    takeovers: int = 0
    """Leases taken over from owners that stopped renewing them (died, or hung)."""

    def try_acquire(self) -> Claim:
        try:
            return self._try_acquire()
        except AccessDenied as exc:  # read-only credentials: nobody here can coordinate
            self.reason = f"no permission ({exc})"
            return Claim.UNCOORDINATED

    def _try_acquire(self) -> Claim:
        raise NotImplementedError

    def release(self, unsaved: str | None = None) -> None:
        """Let go. With ``unsaved`` (why the value could not be saved), leave the lease marked
        so that waiters compute at once instead of one after another."""
        raise NotImplementedError

    def clear_unsaved(self) -> None:
        """After computing without a lease because of an unsaved mark, and saving: remove the
        mark (if it is still the one met), so the key is coordinated again."""


class _NoLease(Lease):
    """For a key whose lease name the store cannot hold (see :func:`_name`)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason

    def _try_acquire(self) -> Claim:
        return Claim.UNCOORDINATED

    def release(self, unsaved: str | None = None) -> None:
        pass


class FileLease(Lease):
    """A per-key lock file in a local cache folder.

    The lock is on the file; its text names the holder for waiters, or, left behind after an
    owner could not save, carries the unsaved mark (an unlocked lock file that is kept). The
    text is read and written only through the descriptor the lock was taken on (see
    :class:`~jangdok.filelock.FileLock`)."""

    def __init__(self, store: Store, name: str) -> None:
        self.path = store.location.local_path(name)
        # Lock files and their folders go when released, so the cache folder holds entries only.
        self._lock = FileLock(store.location.root, name)
        self._me = _owner()

    def _try_acquire(self) -> Claim:
        try:
            acquired = self._lock.acquire(blocking=False)
        except OSError as exc:
            if isinstance(exc, PermissionError) or exc.errno in _UNUSABLE_LOCK:
                where = f" at {exc.filename}" if exc.filename and exc.filename != self.path else ""
                self.reason = f"the lock file {self.path} cannot be used ({exc.strerror or exc}{where})"
                return Claim.UNCOORDINATED
            raise StoreUnavailable(f"Local error locking {self.path}: {exc.strerror or exc}; check the "
                                   "disk and the cache folder") from exc
        fields = self._fields()
        if not acquired:
            self.holder = str(fields.get("owner", self.holder))
            return Claim.WAITER
        if fields.get("unsaved"):
            self._lock.release()  # the mark stays for the others
            self.reason = _unsaved_reason(fields, str(fields.get("owner", self.holder)))
            return Claim.UNSAVED
        self._write(self._me)
        return Claim.OWNER

    def _fields(self) -> dict[str, Any]:
        """What the lock file said when it was opened (its holder, an unsaved mark)."""
        try:
            fields = json.loads(self._lock.text)
        except ValueError:
            return {}
        return fields if isinstance(fields, dict) else {}

    def _write(self, fields: dict[str, Any]) -> None:
        try:
            self._lock.write(json.dumps(fields).encode())
        except OSError as exc:  # the text is for the others; the lock holds without it
            log.debug("could not write %s: %s", self.path, exc)

    def release(self, unsaved: str | None = None) -> None:
        if unsaved is not None and self._lock.held:
            self._write({**self._me, "unsaved": unsaved[:_REASON_CHARS]})
            self._lock.release()
            return
        self._lock.release(remove_up_to=RESERVED_FOLDER)

    def clear_unsaved(self) -> None:
        try:
            if not self._lock.acquire(blocking=False):
                return
        except OSError:
            return
        # Held here, so held by nobody else: the file goes, mark or not. Without a mark it is
        # the one this call just made (another caller removed the mark first): kept, it would
        # be a lock file left in the cache folder for good.
        self._lock.release(remove_up_to=RESERVED_FOLDER)


class ObjectLease(Lease):
    """A lease object at ``.jangdok/leases/<key>`` in a shared store."""

    def __init__(self, store: Store, name: str, seconds: float) -> None:
        self.store = store
        self.key = name
        self.path = store.path(name)
        self.seconds = seconds
        self._me = _owner()
        self._writes = 0
        self._version: str | None = None  # ours, while held
        self._seen: tuple[str, float] | None = None  # another's version and when we first saw it
        self._unsaved_mark: str | None = None  # the version of an unsaved mark met
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self, **extra: Any) -> bytes:
        # Each write numbered: a renewal must change the version (an ETag is the MD5 of the
        # body), or waiters would see the same version for a lifetime and take the lease over.
        self._writes += 1
        return json.dumps({**self._me, "lease_seconds": self.seconds, "write": self._writes, **extra}).encode()

    def _write_if(self, version: str | None, body: bytes | None = None) -> str | None:
        """Write the lease if it is still ``version`` (``None``: absent); its new version, or
        ``None`` if another process's write came first."""
        body = self._body() if body is None else body
        conditional = self.store.capabilities.conditional_write
        if conditional is not True:
            # Not known to be atomic (unknown: the probe could not run; or known to be ignored):
            # check first, which is the only guard where the server ignores conditions ...
            found = self.store.stat(self.key)
            if (found.version if found else None) != version:
                return None
            if conditional is False:
                return self.store.write(self.key, body)
        # ... and, unless known to be ignored, write conditionally: where the server does
        # enforce the condition, two writers can never both succeed.
        written = self.store.write_if(self.key, body, version)
        if written is not None:
            return written
        # A retry whose first attempt landed (its answer lost) meets its own write and is
        # refused: the lease then names this owner, and is this owner's.
        current = _read_lease(self.store, self.key)
        return current[0] if current is not None and current[1].get("owner") == self._me["owner"] else None

    def _try_acquire(self) -> Claim:
        current = _read_lease(self.store, self.key)
        unrenewed = 0.0
        if current is None:
            version = self._write_if(None)
        else:
            seen, fields = current
            # No owner can be renewing a lease nobody can read or make sense of (a PUT cut short,
            # which some servers store): taken over at once (lifetime 0), still conditionally.
            lifetime = _lifetime(fields) if "owner" in fields else 0.0
            self.holder = str(fields.get("owner", self.holder))
            if lifetime and fields.get("unsaved"):
                self._unsaved_mark = seen
                self.reason = _unsaved_reason(fields, self.holder)
                return Claim.UNSAVED
            if lifetime:
                now = time.monotonic()
                if self._seen is None or self._seen[0] != seen:
                    self._seen = (seen, now)
                    return Claim.WAITER
                unrenewed = now - self._seen[1]
                if unrenewed < lifetime:
                    return Claim.WAITER
            version = self._write_if(seen)
            if version is not None and lifetime:
                self.takeovers += 1
                log.warning("lease %s of %s was not renewed for %.0f s; taken over", self.path, self.holder, unrenewed)
            elif version is not None:
                log.info("lease %s was unreadable (a write cut short); taken over", self.path)
        if version is None:
            return Claim.WAITER
        self._version = version
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"jangdok lease {self.key}", daemon=True)
        self._renewer.start()
        return Claim.OWNER

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            with self._guard:
                if self._version is None:
                    return
                try:
                    renewed = self._write_if(self._version)
                except JangdokError as exc:  # the next tick tries again, well within the lifetime
                    log.debug("renewing lease %s failed: %s", self.path, exc)
                    continue
                if renewed is None:
                    log.warning("lease %s was taken over by another process while this one computed "
                                "(it could not renew in time); both may compute the entry", self.path)
                    self._version = None
                    return
                self._version = renewed

    def release(self, unsaved: str | None = None) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._guard:
            version, self._version = self._version, None
        if version is None:
            return
        try:
            if unsaved is not None and self._write_if(version, self._body(unsaved=unsaved[:_REASON_CHARS])) is not None:
                return  # marked: no longer renewed, and left for the waiters to read
            self.store.delete(self.key, version=version)
        except JangdokError as exc:  # it expires unrenewed; a waiter then takes it over
            log.warning("could not remove lease %s: %s", self.path, exc)

    def clear_unsaved(self) -> None:
        mark, self._unsaved_mark = self._unsaved_mark, None
        if mark is None:
            return
        try:
            self.store.delete(self.key, version=mark)  # not a lease taken since
        except JangdokError as exc:
            log.debug("could not remove the unsaved mark %s: %s", self.path, exc)


def lease_for(store: Store, key: str, seconds: float) -> Lease:
    """The lease kind this store needs: an object lease if other machines share it, else a
    lock file in its folder."""
    if store.capabilities.shared:
        name = _name(store.path, _LEASES, key)
        if name is None:
            return _NoLease(store.path(key), "the store cannot hold a lease name for a key this long")
        return ObjectLease(store, name, seconds)
    name = _name(store.location.local_path, _LOCKS, key, _LOCK_SUFFIX)
    if name is None:  # a key's own segments fit, so its hashed name does too; belt and braces
        return _NoLease(store.path(key), "the folder cannot hold a lock file name for a key this long")
    return FileLease(store, name)


def _server_now(store: Store) -> float | None:
    """The store's own clock, read from the modification time it gives a marker written now;
    ``None`` if the marker cannot be written (read-only credentials, an outage)."""
    marker = _CLOCK + uuid.uuid4().hex
    try:
        store.write(marker, b"jangdok clock")  # never empty: see the probes in stores/s3/store.py
        found = store.stat(marker)
    except JangdokError as exc:
        log.info("cannot read the clock of %s (%s); leaving its leases alone", store.location.url, exc)
        return None
    try:
        store.delete(marker, version=found.version if found else None)
    except JangdokError as exc:  # a later cleanup removes it: it is older than any lifetime then
        log.debug("could not remove the clock marker %s: %s", store.path(marker), exc)
    return None if found is None else found.modified


def _stale_leases(store: Store, older_than: float, lease_seconds: float) -> list[ObjectInfo]:
    """The lease objects (and clock markers) nobody wrote for ``older_than`` seconds and ten of
    their lifetimes, judged on the store's clock: a live lease is renewed every third of its
    lifetime, so the server's own times of two writes are all that is compared, and the
    cleaner's clock may be anything. A lease is judged by the lifetime it records (read only
    for those past ten of ``lease_seconds``), so a cleaner configured with shorter leases than
    an owner never takes that owner's."""
    listed = list(store.list(_LEASES))
    if not listed:
        return []
    now = _server_now(store)
    if now is None:
        return []
    stale = []
    for found in listed:
        age = now - found.modified
        if not age > max(older_than, _STALE_LIFETIMES * lease_seconds):
            continue
        current = _read_lease(store, found.key)
        if current is None or current[0] != found.version:
            continue  # gone, or renewed since the listing
        if age > _STALE_LIFETIMES * _lifetime(current[1]):
            stale.append(found)
    return stale


def remove_stale(store: Store, older_than: float, lease_seconds: float,
                 clock: Callable[[], float] = time.time) -> int:
    """Remove leases and lock files that nobody renewed or used for ``older_than`` seconds:
    what owners killed mid-computation left behind, when no waiter came to take them over.

    A lease object's age is judged on the store's clock (see :func:`_stale_leases`), and only
    one older than ten lifetimes goes, whatever ``older_than`` says, so a renewal delayed by a
    busy machine never loses a live lease. Each is removed only in the version that was
    listed and read. A lock file is removed only after taking its lock, so never under a live holder;
    its age is judged on ``clock``, this machine's, which wrote it."""
    if store.capabilities.shared:
        return len(store.delete_many(_stale_leases(store, older_than, lease_seconds)))
    cutoff = clock() - older_than
    removed = 0
    for found in store.list(_LOCKS):
        if found.modified >= cutoff or not found.key.endswith(_LOCK_SUFFIX):
            continue
        lock = FileLock(store.location.root, found.key)
        try:
            if not lock.acquire(blocking=False):
                continue
        except OSError:
            continue
        lock.release(remove_up_to=RESERVED_FOLDER)
        removed += 1
    return removed
