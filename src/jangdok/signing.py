"""Signing keys: who may have written an entry this process will unpickle.

Loading a pickle runs code chosen by whoever wrote it, and a shared bucket is exactly where
others can write. With signing keys configured, every entry carries an HMAC-SHA256 over its
header and payload and the id of the key that made it; a reader refuses, before unpickling a
single byte, an entry that is unsigned, signed with a key it does not hold, or whose signature
does not match. Several keys may be configured to rotate them: the first signs, any verifies.

A key id is derived from the key (a hash of it), so ids never need to be chosen or stored and
reveal nothing of the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from .settings import Secret

__all__ = ["Trust", "MAC_ALGORITHM", "MAC_LENGTH", "key_id", "new_mac"]

MAC_ALGORITHM = "hmac-sha256"
MAC_LENGTH = 32
_ID_DOMAIN = b"jangdok signing key id\0"


def key_id(key: bytes) -> str:
    """A short public name for a signing key: 12 hex digits of a hash of it."""
    return hashlib.sha256(_ID_DOMAIN + key).hexdigest()[:12]


@dataclass(frozen=True)
class Trust:
    """What a cache requires of the entries it loads, and the keys it signs its own with."""

    keys: tuple[tuple[str, bytes], ...] = ()
    """(id, key) pairs; the first signs. Empty: entries are neither signed nor verified."""
    allow_legacy: bool = False
    """With keys: still load plain pickles (the original program's, which cannot be signed)."""

    @classmethod
    def from_secrets(cls, secrets: Iterable[Secret], allow_legacy: bool = False) -> Trust:
        keys = []
        for secret in secrets:
            raw = secret.reveal().encode("utf-8")
            keys.append((key_id(raw), raw))
        return cls(tuple(keys), allow_legacy)

    @property
    def signing(self) -> bool:
        return bool(self.keys)

    @property
    def signer(self) -> tuple[str, bytes]:
        return self.keys[0]

    def key(self, identifier: str) -> bytes | None:
        return next((key for known, key in self.keys if known == identifier), None)

    @property
    def ids(self) -> list[str]:
        return [identifier for identifier, _ in self.keys]

    def __repr__(self) -> str:  # never the keys themselves
        return f"Trust(key_ids={self.ids}, allow_legacy={self.allow_legacy})"


def new_mac(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)
