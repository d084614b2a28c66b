"""Write the golden entry files in this folder. Run it only to add a new format version:
the files of released versions must never change, since caches in the wild hold them.

    python tests/data/make_golden.py
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import xxhash

from jangdok import entry

HERE = Path(__file__).parent
CREATED_AT = 1767225600.0  # 2026-01-01T00:00:00Z, fixed so the files are reproducible
VALUE = {
    "label": "김치",
    "samples": [[0.5, -1.25, 3.0], [1e-9, 2.5e10, -0.0]],
    "shape": (2, 3),
    "raw": b"\x00\x01\xfe\xff",
    "none": None,
}
METADATA = {"seq": 30, "aug": 9, "max": None, "min": 10, "labels": ["김치", "김밥"]}


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def with_header(data: bytes, **changes: object) -> bytes:
    """Rewrite header fields and re-seal the header hash, as a writer with other ideas would."""
    header = entry.read_header(io.BytesIO(data))
    prefix = struct.Struct(">8sHI")
    _, version, header_len = prefix.unpack_from(data)
    fields = json.loads(data[prefix.size : prefix.size + header_len])
    fields.update(changes)
    blob = json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    sealed = prefix.pack(entry.MAGIC, version, len(blob)) + blob
    return sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed)) + data[header.header_size :]


def main() -> None:
    _, chunks = entry.encode(VALUE, METADATA, created_at=CREATED_AT)
    v1 = b"".join(bytes(chunk) for chunk in chunks)
    header = entry.read_header(io.BytesIO(v1))
    payload_start = header.header_size
    files = {
        "v1_entry.jdk": v1,
        "legacy_protocol4.pkl": pickle.dumps(VALUE, protocol=4),
        "legacy_protocol5.pkl": pickle.dumps(VALUE, protocol=5),
        # corrupt variants: each must be detected, deleted and counted as a miss
        "corrupt_v1_truncated_payload.jdk": v1[:-7],
        "corrupt_v1_truncated_header.jdk": v1[: payload_start - 20],
        "corrupt_v1_payload_bitflip.jdk": flip(v1, payload_start + header.payload_length // 2),
        "corrupt_v1_header_bitflip.jdk": flip(v1, 20),
        "corrupt_v1_version_bitflip.jdk": flip(v1, 8),  # version 1 reads as 257
        "corrupt_v1_impossible_length.jdk": with_header(v1, payload_length=10**15),
        "corrupt_v1_trailing_bytes.jdk": v1 + b"\x00",
        "corrupt_legacy_truncated.pkl": pickle.dumps(VALUE, protocol=5)[:-9],
        "corrupt_legacy_garbage.pkl": b"this was never a pickle",
        # intact but unreadable by this version: must be skipped and kept
        "unsupported_v1_serializer.jdk": with_header(v1, serializer="pickle-oob-v9"),
    }
    future = bytearray(v1)
    struct.pack_into(">H", future, 8, entry.FORMAT_VERSION + 1)
    files["unsupported_v2_future_version.jdk"] = bytes(future)
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
