"""Expiry markers: which entries have a TTL, and when it ends, from a listing alone.

An entry's expiry time is in its header, so finding expired entries by their headers costs a
read per entry (on S3, a request each). Instead, an entry saved with a TTL also gets a
*marker*: a small object (holding the key) named ``.jangdok/expiry/<key>/<t>``, where ``t`` is the expiry time
in whole milliseconds since the epoch, rounded up. A listing of the markers (one request per 1,000
on S3) says which entries may have expired, and when; a cache where no entry has a TTL has no
markers at all. Only the entries whose marker is due are read (their headers), because a
marker can be stale: the entry may have been rewritten without a TTL, with another one, or
deleted since. A stale marker is removed by the prune that finds it.

A marker is written before its entry, so a process killed between the two leaves a stale
marker, never an expiring entry without one. Keys too long to fit under the markers' folder
(S3's 1,024 bytes) get a marker under ``.jangdok/expiry-long/<hash>/<t>``, whose body names them.

Entries saved with a TTL by jangdok versions before markers are not found by this; reads treat
them as misses all the same, and ``older_than`` or a bucket lifecycle rule removes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from .errors import InvalidKey
from .location import RESERVED_FOLDER, S3_MAX_KEY_BYTES, normalize_key
from .stores import ObjectInfo, Store

__all__ = ["Due", "marker_for", "due_markers"]

_MARKERS = RESERVED_FOLDER + "/expiry/"
_LONG_MARKERS = RESERVED_FOLDER + "/expiry-long/"
_BOTH = RESERVED_FOLDER + "/expiry"
_MAX_KEY_BYTES = S3_MAX_KEY_BYTES


@dataclass(frozen=True)
class Due:
    """A marker whose time has come, and the key of the entry it marks (``None``: the marker
    names no valid entry key, so it can only be removed)."""

    key: str | None
    marker: ObjectInfo


def marker_for(store: Store, key: str, expires_at: float) -> tuple[str, bytes]:
    """The marker object (name and body) for ``key`` expiring at ``expires_at``."""
    when = str(math.ceil(expires_at * 1000))
    plain = f"{_MARKERS}{key}/{when}"
    try:
        store.path(plain)  # the store's own length rules (S3: the prefix counts too)
    except InvalidKey:
        plain = f"{_LONG_MARKERS}{xxhash.xxh3_128_hexdigest(key.encode())}/{when}"
    # Never an empty body: SeaweedFS answers an empty PutObject with a stray line that the next
    # response on the same connection then trips over.
    return plain, key.encode()


def due_markers(store: Store, now: float) -> Iterator[Due]:
    """The markers due at ``now`` (their time has passed), with the keys they mark; markers
    not yet due cost nothing but their place in the listing."""
    for found in store.list(_BOTH):  # one listing for both folders
        if found.key.startswith(_MARKERS):
            key, _, when = found.key[len(_MARKERS):].rpartition("/")
            if _is_due(when, now):
                yield Due(_entry_key(key), found)
        elif found.key.startswith(_LONG_MARKERS) and _is_due(found.key.rpartition("/")[2], now):
            yield Due(_entry_key(_read_body(store, found)), found)


def _is_due(when: str, now: float) -> bool:
    # A name that is not a time is not a marker this module wrote: due, so prune removes it.
    return not (when.isdigit() and int(when) > now * 1000)


def _entry_key(text: str | None) -> str | None:
    """``text`` if it is a key an entry could have (markers live in a shared store: anyone
    may have written them), else ``None``."""
    if not text:
        return None
    try:
        key = normalize_key(text)
    except InvalidKey:
        return None
    return key if key == text else None


def _read_body(store: Store, found: ObjectInfo) -> str | None:
    reader = store.read(found.key, 0, _MAX_KEY_BYTES)
    if reader is None:
        return None
    with reader:
        body = reader.read()
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None
