"""Drop-in replacement for the chapter generator's original ``s3_utils`` module.

Same names and return conventions as the original, so code written against it (and the
caches it wrote, plain pickles) work unchanged; every function is a thin shim over
:mod:`jangdok`, which does the work: verified entries, atomic writes, retries, fallback.

    from s3_utils import cache_join, cache_load_pickle, cache_save_pickle
    path = cache_join(CACHE_DIR, "label_data.pkl")   # CACHE_DIR: "cache" or "s3://bucket/cache/"
    data = cache_load_pickle(path)                     # the object, or None
    if data is None:
        cache_save_pickle(path, compute())             # True / False

Unlike ``jangdok`` these functions never raise for store errors (the original's contract):
they log why at WARNING on the ``jangdok`` logger and answer False or None.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import jangdok
from jangdok import JangdokError, Settings, is_s3_path

__all__ = [
    "S3CacheManager",
    "cache_exists",
    "cache_join",
    "cache_load_pickle",
    "cache_makedirs",
    "cache_remove",
    "cache_save_pickle",
    "get_cache_manager",
    "is_s3_path",
]

log = logging.getLogger("jangdok")
cache_join = jangdok.join


def cache_exists(path: str) -> bool:
    try:
        return jangdok.exists(path)
    except JangdokError as exc:
        log.warning("cache_exists(%s) failed: %s", path, exc)
        return False


def cache_makedirs(path: str) -> None:
    """Create a local cache folder; S3 has no folders, so nothing to do there."""
    if not is_s3_path(path):
        os.makedirs(path, exist_ok=True)


def cache_save_pickle(path: str, data: Any) -> bool:
    """Pickle ``data`` to ``path`` atomically; ``True`` on success."""
    try:
        jangdok.save(path, data)
    except (JangdokError, OSError) as exc:
        log.warning("cache_save_pickle(%s) failed: %s", path, exc)
        return False
    return True


def cache_load_pickle(path: str) -> Any:
    """The object at ``path``, or ``None`` if it is missing, corrupt (then deleted) or unreachable."""
    try:
        return jangdok.load(path)
    except JangdokError as exc:
        log.warning("cache_load_pickle(%s) failed: %s", path, exc)
        return None


def cache_remove(path: str) -> bool:
    """Delete the entry at ``path``; ``True`` if one was deleted."""
    try:
        return jangdok.remove(path)
    except JangdokError as exc:
        log.warning("cache_remove(%s) failed: %s", path, exc)
        return False


class S3CacheManager:
    """What the original exposed: a boto3 client (``None`` when S3 could not be set up)
    configured from the environment, ``.env`` or an AWS profile, plus the bucket name."""

    def __init__(self) -> None:
        self.settings = Settings.resolve()
        self.bucket_name = self.settings.bucket
        self.s3_client: Any = None
        from jangdok.stores.s3 import make_client

        try:
            self.s3_client, _ = make_client(self.settings)
        except JangdokError as exc:
            log.warning("%s", exc)

    def is_s3_path(self, path: str) -> bool:
        return is_s3_path(path)


_manager: S3CacheManager | None = None
_manager_lock = threading.Lock()


def get_cache_manager() -> S3CacheManager:
    """The shared :class:`S3CacheManager`, created on first call."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = S3CacheManager()
        return _manager
