"""Compute once: when several threads, processes or machines miss one key, one computes.

:func:`get_or_compute` is what :meth:`Cache.get_or_compute` and memoized functions run. The
process that takes the key's lease (see :mod:`jangdok.leases`) computes and saves; the others
wait, polling the entry with backoff and jitter, and load it once it appears. The wait is
bounded, and a lease whose owner died is taken over. Where no lease can be had (read-only
credentials or folder), or its owner could not save its value, each caller computes at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import entry
from .entries import Entries, Entry, EntryInfo, event
from .errors import JangdokError, WaitTimeout
from .leases import Claim, Lease, lease_for

__all__ = ["get_or_compute"]

log = logging.getLogger("jangdok")

T = TypeVar("T")

# Pauses between a waiter's looks at a key being computed elsewhere: short at first (most
# computations are short), growing to a couple of seconds.
_FIRST_PAUSE = 0.05
_LAST_PAUSE = 2.0


def get_or_compute(entries: Entries, key: str, compute: Callable[[], T], metadata: Mapping[str, Any] | None,
                   ttl: float | None, timeout: float, progress: entry.Progress | None,
                   accept: Callable[[EntryInfo], bool] | None, missed: bool = False) -> T:
    """The value under the (normalised) ``key``; on a miss, computed once across processes.
    ``missed``: the caller has just looked and missed; no first look. See
    :meth:`jangdok.Cache.get_or_compute` for the promises."""
    call = _Call(entries, key, progress, accept)
    if not missed:
        found = call.usable(look_first=False)
        if found is not None:
            return found.value
    lease = lease_for(entries.store, key, entries.settings.lease_seconds)
    turn = call.wait_for_turn(lease, timeout)
    if isinstance(turn, Entry):
        return turn.value
    if turn is not Claim.OWNER:
        value = compute()
        if call.save(value, metadata, ttl) is None and turn is Claim.UNSAVED:
            lease.clear_unsaved()
        return value
    unsaved: str | None = None  # why the value could not be saved; None also when compute raised
    try:
        found = call.new_version()  # saved while this one waited
        if found is not None:
            return found.value
        value = compute()
        unsaved = call.save(value, metadata, ttl)
        return value
    finally:
        # Unsaved: marked so, and the waiters compute at once. Else removed: its entry is there,
        # or compute raised and one waiter tries next.
        lease.release(unsaved=unsaved)


class _Call:
    """One ``get_or_compute`` call: looking for a usable entry, waiting for another process's
    computation, and saving this one's."""

    def __init__(self, entries: Entries, key: str, progress: entry.Progress | None,
                 accept: Callable[[EntryInfo], bool] | None) -> None:
        self.entries = entries
        self.store = entries.store
        self.key = key
        self.path = entries.store.path(key)
        self.progress = progress
        self.accept = accept
        self.judged: str | None = None
        """The version last judged: only a new one is loaded (an entry kept but unusable here
        is not read again and again)."""

    def usable(self, look_first: bool) -> Entry | None:
        """The entry under the key if there is one ``accept`` takes. ``look_first``: look before
        loading (one cheap request: ``exists``, or a header read to judge by it), so that
        finding nothing counts no miss."""
        entries, accept = self.entries, self.accept
        if look_first:
            if accept is None:
                if not self.store.exists(self.key):
                    return None
            else:
                info = entries.info(self.key)
                if info is None or not accept(info):
                    return None
        found = entries.load(self.key, self.progress)
        if found is None or (accept is not None and not accept(found.info)):
            return None
        return found

    def new_version(self) -> Entry | None:
        """The entry if a version not judged yet is there now and usable. One request (``stat``),
        which also tells a composed store that a copy of an older version is out of date."""
        current = self.store.stat(self.key)
        if current is None or current.version == self.judged:
            return None
        self.judged = current.version
        return self.usable(look_first=self.accept is not None)

    def wait_for_turn(self, lease: Lease, timeout: float) -> Entry | Claim:
        """Take the lease (:attr:`Claim.OWNER`), learn that nobody coordinates the key
        (:attr:`Claim.UNCOORDINATED`, :attr:`Claim.UNSAVED`), or wait for the holder's entry
        and return it."""
        started = time.monotonic()
        deadline = started + timeout
        pause = _FIRST_PAUSE
        waited = 0.0  # stays 0 unless another process held the lease: taking a free one is no wait
        longest = max(_FIRST_PAUSE, min(_LAST_PAUSE, self.entries.settings.lease_seconds / 3))
        while (claim := lease.try_acquire()) is Claim.WAITER:
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"waited {time.monotonic() - started:.1f} s for {self.path}, which {lease.holder} is "
                    f"computing (lease {lease.path}); wait longer (timeout=, JANGDOK_WAIT_TIMEOUT) or check "
                    "that process"
                )
            time.sleep(random.uniform(pause / 2, pause))  # jitter: waiters must not poll in step
            pause = min(pause * 1.5, longest)
            # The entry first: once its owner has saved it, taking the freed lease would cost two
            # requests for nothing.
            waited = time.monotonic() - started
            found = self.new_version()
            if found is not None:
                self.entries.count(seconds_waiting=waited, lease_takeovers=lease.takeovers)
                return found
        self.entries.count(seconds_waiting=waited and time.monotonic() - started, lease_takeovers=lease.takeovers)
        if claim is Claim.UNCOORDINATED:
            log.warning("cannot take a compute lease for %s: %s; computing without coordinating with other "
                        "processes", self.path, lease.reason)
        elif claim is Claim.UNSAVED:  # the owner that could not save said so at WARNING
            log.info("computing %s at once: %s", self.path, lease.reason)
        return claim

    def save(self, value: Any, metadata: Mapping[str, Any] | None, ttl: float | None) -> str | None:
        """Save a computed value; ``None`` if saved, else why not (a WARNING says it too: the
        value is returned all the same)."""
        self.entries.count(computed=1)
        try:
            self.entries.save(self.key, value, metadata, self.progress, ttl)
        except JangdokError as exc:
            log.warning("computed %s but could not save it: %s", self.path, exc, extra=event("save_failed", self.path))
            return str(exc) or type(exc).__name__
        return None
