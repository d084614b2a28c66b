"""Path-level functions for callers that hold full entry paths, as the seed's code did.

``load("s3://bucket/cache/x.pkl")`` and ``load("cache/x.pkl")`` go through the same
:class:`~jangdok.cache.Cache` machinery: one shared cache per bucket or per folder, configured
from the environment, so clients and fallback decisions are made once, not per call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from .cache import Cache, EntryInfo
from .location import Location, split_path
from .perprocess import PerProcess

__all__ = ["load", "save", "exists", "remove", "stat", "cache_for"]

_caches: dict[Location, Cache] = {}
# The caches themselves survive fork (their stores make new connections in a child); a lock
# held by another thread at the moment of fork would not be released in the child.
_locks = PerProcess(threading.Lock)


def cache_for(path: str | os.PathLike[str]) -> tuple[Cache, str]:
    """The shared cache that holds ``path``, and the path's key in it."""
    location, key = split_path(path)
    with _locks.get():
        cache = _caches.get(location)
        if cache is None:
            cache = _caches[location] = Cache(location.url)
    return cache, key


def load(path: str | os.PathLike[str], default: Any = None) -> Any:
    """The value stored at ``path``, or ``default`` if missing or corrupt (then deleted)."""
    cache, key = cache_for(path)
    return cache.get(key, default)


def save(path: str | os.PathLike[str], value: Any, metadata: Mapping[str, Any] | None = None) -> EntryInfo:
    """Store ``value`` at ``path`` atomically."""
    cache, key = cache_for(path)
    return cache.put(key, value, metadata)


def exists(path: str | os.PathLike[str]) -> bool:
    cache, key = cache_for(path)
    return cache.exists(key)


def remove(path: str | os.PathLike[str]) -> bool:
    """Delete the entry at ``path``; ``True`` if there was one."""
    cache, key = cache_for(path)
    return cache.delete(key)


def stat(path: str | os.PathLike[str]) -> EntryInfo | None:
    cache, key = cache_for(path)
    return cache.stat(key)
