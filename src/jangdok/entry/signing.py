"""Signing keys: who may have written an entry this process will unpickle.

Loading a pickle runs code chosen by whoever wrote it, and a shared bucket is exactly where
others can write. With signing keys configured, every entry carries an HMAC-SHA256 over its
header and payload and the id of the key that made it; a reader refuses, before unpickling a
single byte, an entry that is unsigned, signed with a key it does not hold, or whose signature
does not match. Several keys may be configured to rotate them: the first signs, any verifies.

A key id is derived from the key (a hash of it), so ids never need to be chosen or stored and
reveal nothing of the key.

The MAC is HMAC-SHA256 over the entry's sealed header followed by the SHA-256 of each
``MAC_CHUNK`` piece of the payload. Hashing pieces apart lets threads hash them at once (SHA-256
releases the GIL), and as a load reads them, which roughly halves what signing adds to a large
load on two cores; SHA-256's collision resistance keeps the construction as strong as one
HMAC over the whole payload.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..settings import Secret

__all__ = ["Trust", "PieceDigests", "MAC_ALGORITHM", "MAC_LENGTH", "MAC_CHUNK", "MIN_MAC_CHUNK", "MAX_MAC_CHUNK",
           "key_id", "payload_mac"]

MAC_ALGORITHM = "hmac-sha256"
MAC_LENGTH = 32
MAC_CHUNK = 4 << 20
"""Bytes of payload per SHA-256 in the MAC: large enough that a thread's hand-off costs
nothing next to hashing it (~2 ms), small enough that a 50 MB value spreads over every core."""
MIN_MAC_CHUNK = 1 << 20
"""Smallest piece a header may declare: a forged header declaring tiny pieces would otherwise
make a reader spend minutes and gigabytes (one digest and one task per piece) before the MAC
check refuses it."""
MAX_MAC_CHUNK = 1 << 30
# Threads hashing one payload's pieces: they live only while that payload is hashed, so a
# process forked later never copies them (a fork of a process with threads may deadlock, and
# Python 3.12+ warns about it).
_HASHING_THREADS = max(1, min(4, os.cpu_count() or 1))
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




def _sha256(pieces: list[memoryview]) -> bytes:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.digest()


class PieceDigests:
    """The SHA-256 of each ``chunk``-byte piece of a stream fed in any slices, hashed by
    threads as the pieces complete. The slices must stay unchanged until :meth:`digests`.

    The threads start with the first complete piece (a small payload never starts any) and
    are stopped by :meth:`digests` or :meth:`close`, whichever comes first: call ``close``
    when the digests will not be asked for (a read that failed half way)."""

    def __init__(self, chunk: int = MAC_CHUNK) -> None:
        self.chunk = chunk
        self._pending: list[memoryview] = []
        self._pending_bytes = 0
        self._done: list[Future[bytes] | bytes] = []
        self._threads: ThreadPoolExecutor | None = None

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(view.nbytes, self.chunk - self._pending_bytes)
            self._pending.append(view[:take])
            self._pending_bytes += take
            view = view[take:]
            if self._pending_bytes == self.chunk:
                self._flush(threaded=True)

    def _flush(self, threaded: bool) -> None:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        if threaded:
            try:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(_HASHING_THREADS, thread_name_prefix="jangdok-mac")
                self._done.append(self._threads.submit(_sha256, pieces))
                return
            except RuntimeError:  # the interpreter is shutting down (an atexit handler): no threads
                pass
        self._done.append(_sha256(pieces))

    def digests(self) -> bytes:
        """The pieces' digests in order (the last piece may be short; no piece, no digest)."""
        try:
            if self._pending:
                self._flush(threaded=False)
            return b"".join(done if isinstance(done, bytes) else done.result() for done in self._done)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the threads, and wait until they have: none may outlive the work."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)


def payload_mac(key: bytes, sealed: bytes, pieces: PieceDigests) -> bytes:
    """The MAC of an entry from its sealed header and its payload's piece digests."""
    return hmac.new(key, sealed + pieces.digests(), hashlib.sha256).digest()
