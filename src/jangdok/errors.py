"""The exception hierarchy. Every error jangdok raises is a :class:`JangdokError`.

Messages name what failed, on which path, and what to check. Backends translate their
client library's exceptions into these at their boundary (``raise ... from exc``) so callers
never need to import botocore to handle a cache failure.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JangdokError",
    "ConfigError",
    "InvalidLocation",
    "InvalidKey",
    "CredentialsError",
    "NoCredentials",
    "AccessDenied",
    "StoreUnavailable",
    "ObjectChanged",
    "CorruptEntry",
    "UnsupportedEntry",
    "UntrustedEntry",
    "InvalidRange",
    "InvalidValue",
    "WaitTimeout",
    "BatchError",
]


class JangdokError(Exception):
    """Base class of every error raised by jangdok."""


class ConfigError(JangdokError):
    """The configuration cannot work: a bad setting, a missing bucket, an unknown profile."""


class InvalidLocation(ConfigError, ValueError):
    """A cache location string (a folder or ``s3://bucket/prefix/``) is malformed."""


class InvalidKey(ConfigError, ValueError):
    """A cache key is malformed or would escape the cache root."""


class CredentialsError(JangdokError):
    """No usable credentials were found, or the store rejected the ones given."""


class NoCredentials(CredentialsError):
    """No credentials were found at all (as opposed to credentials the store rejected).

    Only this one lets an S3 cache fall back to a local folder: a rejected secret is a
    mistake to fix, and quietly caching elsewhere would hide it.
    """


class AccessDenied(JangdokError):
    """The credentials were accepted but lack a permission needed for the operation."""


class StoreUnavailable(JangdokError):
    """The store could not be reached or kept failing after the allowed retries."""


class ObjectChanged(StoreUnavailable):
    """An object was replaced or removed while it was being read in several requests; reading
    it again reads the new one. Loads do that themselves."""


class CorruptEntry(JangdokError):
    """A stored entry is damaged (truncated, bit-flipped, undecodable); it is safe to delete."""


class UnsupportedEntry(JangdokError):
    """A stored entry uses a format this version cannot read (written by a newer jangdok).

    Unlike :class:`CorruptEntry` it must not be deleted: a newer reader may need it.
    """


class UntrustedEntry(JangdokError):
    """A cache with signing keys refused an entry before unpickling it: unsigned, signed with a
    key it does not hold, or with a signature that does not match its bytes.

    Like :class:`UnsupportedEntry` it is kept (it may be another team's, signed with their key)
    unless the ``delete_untrusted`` setting says otherwise.
    """


class InvalidRange(JangdokError, ValueError):
    """A byte range asked of a store is malformed (negative, or ending before it starts)."""


class InvalidValue(JangdokError, TypeError):
    """A value or its metadata cannot be stored: not picklable, nested too deeply, metadata
    that is not JSON or too large. Raised by ``put`` before anything is written."""


class WaitTimeout(JangdokError, TimeoutError):
    """``get_or_compute`` waited longer than allowed for another process to compute an entry."""


class BatchError(JangdokError):
    """Some keys of a batch call (``get_many``, ``get_entries``, ``put_many``) failed; the
    others did not, and nothing of theirs is lost.

    :attr:`results` is what the call would have returned for the keys that did not fail (the
    hits of a load, the entries saved), :attr:`errors` each failed key, as the caller gave
    it, with its own error (``StoreUnavailable``, ``AccessDenied``, ``InvalidValue``...).
    Both are ordered as the keys were given."""

    def __init__(self, message: str, results: dict[str, Any], errors: dict[str, JangdokError]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole, to cross a process boundary
        return type(self), (str(self), self.results, self.errors)
