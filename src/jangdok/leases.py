"""Leases: who computes an entry when several processes or machines miss it at once.

Two kinds, chosen by what the store is:

- :class:`FileLease` for a folder only this machine sees: a lock file under the cache's
  reserved folder, held with ``flock``, so the OS releases it the instant its holder dies.
- :class:`ObjectLease` for a shared store (S3): a small object created with a conditional
  write (``If-None-Match: *``), so exactly one of the processes racing for it succeeds. It
  holds its owner, host and expiry; the owner renews it (a write conditional on its ETag)
  every third of its lifetime. A waiter that sees the *same* version of a lease for a whole
  lifetime knows the owner stopped renewing, and takes it over with a write conditional on
  that version, so two waiters can never both take it. Expiry is judged on the waiter's own
  monotonic clock from when it first saw that version, never by comparing clocks between
  machines. A server that ignores the conditions (probed once by the store, with a WARNING)
  gets a check-then-write: best effort, as that WARNING says.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .errors import AccessDenied, JangdokError, StoreUnavailable
from .filelock import FileLock
from .location import RESERVED_FOLDER
from .stores import Store

__all__ = ["Lease", "FileLease", "ObjectLease", "lease_for", "remove_stale"]

log = logging.getLogger("jangdok")

_LEASES = RESERVED_FOLDER + "/leases/"
_LOCKS = RESERVED_FOLDER + "/locks/"
_STALE_LIFETIMES = 10


def _owner() -> dict[str, Any]:
    return {"owner": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            "host": socket.gethostname(), "pid": os.getpid()}


class Lease:
    """The right to compute one key. ``try_acquire`` never blocks; ``holder`` describes who
    had it at the last failed attempt, for waiting messages."""

    path: str
    holder: str = "an unknown process"
    takeovers: int = 0
    """Leases taken over from owners that stopped renewing them (died, or hung)."""

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class FileLease(Lease):
    """A per-key lock file in a local cache folder."""

    def __init__(self, store: Store, key: str) -> None:
        self.path = store.location.local_path(_LOCKS + key + ".lock")
        # Lock files and their folders go when released, so the cache folder holds entries only.
        self._top = store.location.local_path(RESERVED_FOLDER)
        self._lock = FileLock(self.path)

    def try_acquire(self) -> bool:
        try:
            acquired = self._lock.acquire(blocking=False)
        except PermissionError as exc:
            raise AccessDenied(f"Local error locking {self.path}: permission denied; check the cache "
                               "folder's owner and mode") from exc
        except OSError as exc:
            raise StoreUnavailable(f"Local error locking {self.path}: {exc.strerror or exc}; check the "
                                   "disk and the cache folder") from exc
        if acquired:
            try:
                with open(self.path, "w") as file:  # the lock is on the inode; the text is for waiters
                    json.dump(_owner(), file)
            except OSError:
                pass
            return True
        try:
            with open(self.path) as file:
                self.holder = json.load(file)["owner"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return False

    def release(self) -> None:
        self._lock.release(remove_up_to=self._top)


class ObjectLease(Lease):
    """A lease object at ``.jangdok/leases/<key>`` in a shared store."""

    def __init__(self, store: Store, key: str, seconds: float) -> None:
        self.store = store
        self.key = _LEASES + key
        self.path = store.path(self.key)
        self.seconds = seconds
        self._me = _owner()
        self._version: str | None = None  # ours, while held
        self._seen: tuple[str, float] | None = None  # another's version and when we first saw it
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self._me, "expires_at": time.time() + self.seconds,
                           "lease_seconds": self.seconds}).encode()

    def _write_if(self, version: str | None) -> str | None:
        if self.store.capabilities.conditional_write:
            written = self.store.write_if(self.key, self._body(), version)
            if written is not None:
                return written
            # A retry whose first attempt landed (its answer lost) meets its own write and is
            # refused: the lease then names this owner, and is this owner's.
            current = self._read()
            return current[0] if current is not None and current[1].get("owner") == self._me["owner"] else None
        current_info = self.store.stat(self.key)  # best effort: the store warned it ignores conditions
        if (current_info.version if current_info else None) != version:
            return None
        return self.store.write(self.key, self._body())

    def _read(self) -> tuple[str, dict[str, Any]] | None:
        """The lease's version and fields (empty if torn or foreign), or None if there is none."""
        reader = self.store.read(self.key)
        if reader is None:
            return None
        with reader:
            version, body = reader.info.version, reader.read()
        try:
            fields = json.loads(body)
        except ValueError:
            fields = None
        return version, fields if isinstance(fields, dict) else {}

    def try_acquire(self) -> bool:
        current = self._read()
        if current is None:
            version = self._write_if(None)
        else:
            seen, fields = current
            try:
                self.holder = str(fields["owner"])
                lifetime = float(fields.get("lease_seconds", self.seconds))
            except (KeyError, TypeError, ValueError):
                # No owner can be renewing a lease nobody can read (a PUT cut short, which some
                # servers store): taken over at once, still by a write conditional on its version.
                lifetime = 0.0
            if lifetime:
                now = time.monotonic()
                if self._seen is None or self._seen[0] != seen:
                    self._seen = (seen, now)
                    return False
                unrenewed = now - self._seen[1]
                if unrenewed < lifetime:
                    return False
            version = self._write_if(seen)
            if version is not None and lifetime:
                self.takeovers += 1
                log.warning("lease %s of %s was not renewed for %.0f s; taken over", self.path, self.holder, unrenewed)
            elif version is not None:
                log.info("lease %s was unreadable (a write cut short); taken over", self.path)
        if version is None:
            return False
        self._version = version
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"jangdok lease {self.key}", daemon=True)
        self._renewer.start()
        return True

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

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._guard:
            version, self._version = self._version, None
        if version is None:
            return
        try:
            self.store.delete(self.key, version=version)
        except JangdokError as exc:  # it expires unrenewed; a waiter then takes it over
            log.warning("could not remove lease %s: %s", self.path, exc)


def lease_for(store: Store, key: str, seconds: float) -> Lease:
    """The lease kind this store needs: an object lease if other machines share it, else a
    lock file in its folder."""
    if store.capabilities.shared:
        return ObjectLease(store, key, seconds)
    return FileLease(store, key)


def remove_stale(store: Store, older_than: float, lease_seconds: float) -> int:
    """Remove leases and lock files that nobody renewed or used for ``older_than`` seconds:
    what owners killed mid-computation left behind, when no waiter came to take them over.

    A live lease is renewed every third of its lifetime, but its age is judged by comparing
    the server's clock with this machine's, so only leases older than ten lifetimes go
    whatever ``older_than`` says: minutes of clock skew never remove a live one. A lock file is
    removed only after taking its lock, so never under a live holder."""
    if store.capabilities.shared:
        cutoff = time.time() - max(older_than, _STALE_LIFETIMES * lease_seconds)
        return len(store.delete_many(found for found in store.list(_LEASES) if found.modified < cutoff))
    cutoff = time.time() - older_than
    removed = 0
    for found in store.list(_LOCKS):
        if found.modified >= cutoff or not found.key.endswith(".lock"):
            continue
        lease = FileLease(store, found.key[len(_LOCKS):-len(".lock")])
        if lease.try_acquire():
            lease.release()
            removed += 1
    return removed
