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
from collections.abc import Callable
from typing import Any

import jangdok
from jangdok import JangdokError, Settings, is_s3_path
from jangdok.perprocess import PerProcess

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


def _answer(name: str, path: str, action: Callable[[], Any], failed: Any) -> Any:
    """The original's contract: a failure is logged and answered, never raised."""
    try:
        return action()
    except (JangdokError, TypeError) as exc:
        # TypeError: metadata that is not a mapping; unpicklable values are InvalidValue.
        log.warning("%s(%s) failed: %s", name, path, exc)
        return failed


def cache_exists(path: str) -> bool:
    return _answer("cache_exists", path, lambda: jangdok.exists(path), False)


def cache_join(root: str, *parts: str) -> str:
    """Join path parts (``/`` for S3 URLs). A malformed root is logged, not raised: the
    functions given the result then answer None or False, as the original would."""
    try:
        return jangdok.join(root, *parts)
    except JangdokError as exc:
        log.warning("cache_join(%s) failed: %s", root, exc)
        return "/".join([str(root).rstrip("/"), *parts])


def cache_makedirs(path: str) -> None:
    """Create a local cache folder; S3 has no folders, so nothing to do there."""
    if not is_s3_path(path):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:  # the saves that follow will fail and say why, one by one
            log.warning("cache_makedirs(%s) failed: %s", path, exc.strerror or exc)


def cache_save_pickle(path: str, data: Any) -> bool:
    """Pickle ``data`` to ``path`` atomically; ``True`` on success."""
    return _answer("cache_save_pickle", path, lambda: jangdok.save(path, data) is not None, False)


def cache_load_pickle(path: str) -> Any:
    """The object at ``path``, or ``None`` if it is missing, corrupt (then deleted) or unreachable."""
    return _answer("cache_load_pickle", path, lambda: jangdok.load(path), None)


def cache_remove(path: str) -> bool:
    """Delete the entry at ``path``; ``True`` if one was deleted."""
    return _answer("cache_remove", path, lambda: jangdok.remove(path), False)


class S3CacheManager:
    """What the original exposed: a boto3 client (``None`` when S3 could not be set up)
    configured from the environment, ``.env`` or an AWS profile, plus the bucket name."""

    def __init__(self) -> None:
        self.bucket_name: str | None = None
        self._clients: PerProcess[Any] | None = None
        from jangdok.stores.s3 import make_client

        try:
            settings = Settings.resolve()
            self.bucket_name = settings.bucket
            client, _ = make_client(settings)
        except JangdokError as exc:
            log.warning("%s", exc)
            return
        self._clients = PerProcess(lambda: make_client(settings)[0], client)

    @property
    def s3_client(self) -> Any:
        """This process's client: a forked worker gets its own, never its parent's connections
        (``None`` if it cannot be made there)."""
        if self._clients is None:
            return None
        try:
            return self._clients.get()
        except JangdokError as exc:
            log.warning("%s", exc)
            return None

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
