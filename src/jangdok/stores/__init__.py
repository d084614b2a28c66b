"""Backends: the store contract, its two implementations, and the store composing them."""

from __future__ import annotations

import logging
import os

from ..errors import NoCredentials, StoreUnavailable
from ..location import Location
from ..settings import Settings
from .base import UNCHANGED, Capabilities, Chunks, ObjectInfo, Reader, Store, Unchanged
from .local import LocalStore
from .tiered import FALLBACK, LOCAL_TIER, LocalTier, TieredStore

__all__ = ["Store", "Reader", "ObjectInfo", "Capabilities", "Chunks", "UNCHANGED", "Unchanged", "LocalStore",
           "TieredStore", "LocalTier", "LOCAL_TIER", "FALLBACK", "open_store"]

log = logging.getLogger("jangdok")


def _mirror(folder: str, location: Location) -> str:
    """A folder under ``folder`` laid out like the bucket: ``<folder>/<bucket>/<prefix>``."""
    return os.path.join(folder, location.root, *filter(None, location.prefix.split("/")))


def open_store(location: Location, settings: Settings) -> Store:
    """The store for a location and its settings: a folder; an S3 prefix (checked on opening:
    credentials, bucket), with a local tier in front of it if ``local_dir`` is set; or, when
    S3 has no credentials or cannot be reached and ``fallback`` is on, a local folder
    mirroring the bucket's layout (a wrong bucket or a rejected secret still raises: caching
    elsewhere would hide a mistake to fix). An S3 prefix that cannot be reached but has a
    local tier keeps its tier, whose copies are served meanwhile (the tier says so), and S3
    is asked again as the tier's trust window passes."""
    if not location.is_s3:
        return LocalStore(location, durable=settings.durable)
    from .s3 import S3Store  # boto3 costs ~0.3 s to import; local-only users never pay it

    try:
        remote = S3Store(location, settings)
    except (NoCredentials, StoreUnavailable) as exc:
        return _fallback(location, settings, exc)
    try:
        remote.check()
    except (NoCredentials, StoreUnavailable) as exc:
        if isinstance(exc, StoreUnavailable) and settings.local_dir is not None:
            return _tiered(remote, location, settings, unreachable=exc)
        remote.close()
        return _fallback(location, settings, exc)
    except BaseException:
        remote.close()
        raise
    if settings.local_dir is None:
        return remote
    return _tiered(remote, location, settings)


def _tiered(remote: Store, location: Location, settings: Settings,
            unreachable: StoreUnavailable | None = None) -> TieredStore:
    assert settings.local_dir is not None
    tier = LocalStore(Location("local", _mirror(settings.local_dir, location)), durable=settings.durable)
    return TieredStore(remote, tier, max_bytes=settings.local_max_bytes, max_entry_bytes=settings.local_max_entry_bytes,
                       trust_seconds=settings.local_trust_seconds, unreachable=unreachable)


def _fallback(location: Location, settings: Settings, reason: Exception) -> Store:
    if not settings.fallback:
        raise reason
    folder = _mirror(settings.fallback_dir, location)
    log.warning(
        "S3 cache %s is unavailable, using the local fallback folder %s. Reason: %s "
        "(set JANGDOK_FALLBACK=0 to raise instead)", location.url, folder, reason,
        extra={"jangdok_event": "fallback", "jangdok_path": folder},
    )
    return TieredStore(None, LocalStore(Location("local", folder), durable=settings.durable),
                       fallback_reason=str(reason))
