"""Entries written by hand, as someone without jangdok (or without our key) would write them:
any header fields, any stream and buffers, with checksums that hold."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import xxhash

from jangdok.entry import ALIGNMENT, FORMAT_VERSION, MAGIC

_BLOCK = 128 * 1024


def entry_bytes(stream: bytes, stored: list[bytes] = (), compressed: dict[str, Any] | None = None,
                serializer: str = "safe", key: str | None = "x.pkl", fields: dict[str, Any] | None = None) -> bytes:
    """A format-2 entry of this stream and these stored buffers, its digest and header hash
    right; ``fields`` add to or replace the header's."""
    payload = bytearray(stream)
    for buffer in stored:
        payload += bytes(-len(payload) % ALIGNMENT) + buffer
    header = {"serializer": serializer, "checksum": "xxh3_128", "digest": xxhash.xxh3_128_hexdigest(bytes(payload)),
              "payload_length": len(payload), "stream_length": len(stream), "buffers": [len(b) for b in stored],
              "compressed": compressed or {}, "mac_length": 0, "created_at": 0.0, "metadata": None, "key": key}
    header.update(fields or {})
    return seal(header) + bytes(payload)


def seal(header: dict[str, Any]) -> bytes:
    """The bytes before the payload, for these header fields (no MAC)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    sealed = struct.pack(">8sHI", MAGIC, FORMAT_VERSION, len(text)) + text
    lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed))
    return lead + bytes(-len(lead) % ALIGNMENT)


def rle_frame(length: int) -> bytes:
    """A valid zstd frame declaring ``length`` zero bytes in 4-byte RLE blocks of 128 KiB each:
    the most zstd's format can expand (~32000:1). No content checksum, so making one for any
    length costs nothing."""
    frame = bytearray(b"\x28\xb5\x2f\xfd")  # magic
    frame += bytes([0xC0, 7 << 3])  # 8-byte content size, not single-segment; a 128 KiB window
    frame += struct.pack("<Q", length)
    left = length
    while True:
        size = min(left, _BLOCK)
        left -= size
        block = (size << 3) | (1 << 1) | (1 if left == 0 else 0)  # an RLE block; the last one says so
        frame += block.to_bytes(3, "little") + b"\x00"
        if left == 0:
            return bytes(frame)


def zstd_description(length: int) -> dict[str, Any]:
    return {"codec": "zstd", "shuffle": 0, "length": length}


def same(a: Any, b: Any) -> bool:
    """Whether a loaded value is what was stored: types, dtypes and shapes too, NaN as NaN,
    -0.0 apart from 0.0, bytes and bytearray apart."""
    if isinstance(a, (np.ndarray, np.generic)):  # byte for byte: NaN payloads and -0.0 too
        return (type(a) is type(b) and a.dtype == b.dtype and np.shape(a) == np.shape(b)
                and np.asarray(a).tobytes() == np.asarray(b).tobytes())
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a == b) and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))
