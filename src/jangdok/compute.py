"""Compute once: when several threads, processes or machines miss one key, one computes.

:func:`get_or_compute` is what :meth:`Cache.get_or_compute` and memoized functions run. The
process that takes the key's lease (see :mod:`jangdok.leases`) computes and saves; the others
wait, polling the entry with backoff and jitter, and load it once it appears. The wait is
bounded, and a lease whose owner died is taken over.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import entry
from .entries import Entries, Entry, EntryInfo, event
from .errors import AccessDenied, JangdokError, WaitTimeout
from .leases import Lease, lease_for

__all__ = ["get_or_compute"]

log = logging.getLogger("jangdok")

T = TypeVar("T")

# Pauses between a waiter's looks at a key being computed elsewhere: short at first (most
# computations are short), growing to a couple of seconds.
_FIRST_PAUSE = 0.05
_LAST_PAUSE = 2.0


def get_or_compute(entries: Entries, key: str, compute: Callable[[], T], metadata: Mapping[str, Any] | None,
                   ttl: float | None, timeout: float, progress: entry.Progress | None,
                   accept: Callable[[EntryInfo], bool] | None) -> T:
    """The value under the (normalised) ``key``; on a miss, computed once across processes.
    See :meth:`jangdok.Cache.get_or_compute` for the promises."""
    found = _usable(entries, key, progress, accept, look_first=False)
    if found is not None:
        return found.value  # type: ignore[no-any-return]
    store = entries.store
    settings = entries.settings
    lease: Lease | None = lease_for(store, key, settings.lease_seconds)
    started = time.monotonic()
    deadline = started + timeout
    pause = _FIRST_PAUSE
    waited = 0.0  # stays 0 unless another process held the lease: taking a free one is no wait
    looked: str | None = None  # the version last judged: a poll loads only a new one
    while lease is not None and not (acquired := _try_lease(lease, store.path(key))):
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
        pause = min(pause * 1.5, max(_FIRST_PAUSE, min(_LAST_PAUSE, settings.lease_seconds / 3)))
        # The entry first: once its owner has saved it, taking the freed lease would cost two
        # requests for nothing. One cheap request (stat) per poll, and only a version not yet
        # judged is loaded: an entry kept but unusable here is not read again and again.
        waited = time.monotonic() - started
        current = store.stat(key)
        if current is None or current.version == looked:
            continue
        looked = current.version
        found = _usable(entries, key, progress, accept, look_first=accept is not None)
        if found is not None:
            entries.count(seconds_waiting=waited, lease_takeovers=lease.takeovers)
            return found.value  # type: ignore[no-any-return]
    try:
        if lease is not None:
            entries.count(seconds_waiting=waited and time.monotonic() - started, lease_takeovers=lease.takeovers)
            found = _usable(entries, key, progress, accept, look_first=True)  # saved while this one waited
            if found is not None:
                return found.value  # type: ignore[no-any-return]
        value = compute()
        entries.count(computed=1)
        try:
            entries.save(key, value, metadata, progress, ttl)
        except JangdokError as exc:
            log.warning("computed %s but could not save it: %s", store.path(key), exc,
                        extra=event("save_failed", store.path(key)))
        return value
    finally:
        if lease is not None:
            lease.release()


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


def _usable(entries: Entries, key: str, progress: entry.Progress | None,
            accept: Callable[[EntryInfo], bool] | None, look_first: bool) -> Entry | None:
    """The entry under ``key`` if there is one ``accept`` takes. ``look_first``: look before
    loading (one cheap request: ``exists``, or a header read to judge by it), so that finding
    nothing counts no miss."""
    if look_first:
        if accept is None:
            if not entries.store.exists(key):
                return None
        else:
            info = entries.info(key)
            if info is None or not accept(info):
                return None
    found = entries.load(key, progress)
    if found is None or (accept is not None and not accept(found.info)):
        return None
    return found
