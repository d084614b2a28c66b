"""Backends: the store contract and its two implementations."""

from __future__ import annotations

from ..location import Location
from ..settings import Settings
from .base import Capabilities, Chunks, ObjectInfo, Reader, Store
from .local import LocalStore

__all__ = ["Store", "Reader", "ObjectInfo", "Capabilities", "Chunks", "LocalStore", "open_store"]


def open_store(location: Location, settings: Settings) -> Store:
    """The backend for a location. S3 stores are checked (credentials, bucket) on opening."""
    if not location.is_s3:
        return LocalStore(location, durable=settings.durable)
    from .s3 import S3Store  # boto3 costs ~0.3 s to import; local-only users never pay it

    store = S3Store(location, settings)
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store
