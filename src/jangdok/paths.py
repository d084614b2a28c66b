"""Path-level functions for callers that hold full entry paths, as the seed's code did.

``load("s3://bucket/cache/x.pkl")`` and ``load("cache/x.pkl")`` go through the same
:class:`~jangdok.cache.Cache` machinery: one shared cache per root, configured once from the
environment, so clients and fallback decisions are made once per root, not per call.

A path is keyed as the user's cache keys it (:func:`~jangdok.location.split_path`): from the
configured cache root (``CACHE_DIR``) when it lies under it; else an S3 path from its bucket and
a local path from its own folder. An entry records the key it was written under and is read back
only under exactly that key, so ``Cache(root).put("chapters/x.pkl", ...)`` and
``load(root + "/chapters/x.pkl")`` reach each other's entries when ``root`` is the configured
one. One store is opened per root (per bucket, outside ``CACHE_DIR``): one client, and one
listing request when first used.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Any

from .cache import Cache, EntryInfo
from .location import Location, parse_location, split_path
from .perprocess import PerProcess
from .settings import Settings

__all__ = ["load", "save", "exists", "remove", "stat", "cache_for"]

_caches: dict[Location, Cache] = {}
_settings: Settings | None = None
"""Resolved on first use, for every shared cache; its ``cache_dir`` is the configured root."""
# The caches themselves survive fork (their stores make new connections in a child); a lock
# held by another thread at the moment of fork would not be released in the child.
_locks = PerProcess(threading.Lock)


def cache_for(path: str | os.PathLike[str]) -> tuple[Cache, str]:
    """The shared cache that holds ``path``, and the path's key in it."""
    global _settings
    with _locks.get():
        if _settings is None:
            _settings = Settings.resolve()
        location, key = split_path(path, parse_location(_settings.cache_dir))
        cache = _caches.get(location)
        if cache is None:
            settings = dataclasses.replace(_settings, cache_dir=location.url)
            cache = _caches[location] = Cache.from_settings(settings)
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
