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
    lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed))
    if version >= 2:  # the payload starts at the next multiple of 64 bytes
        lead += bytes(-len(lead) % entry.ALIGNMENT)
    return lead + data[header.header_size :]


class Samples:
    """Bytes that travel out of band as numpy arrays do, without tying the golden files to
    one numpy version's module names."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytearray(data)

    def __reduce_ex__(self, protocol: int) -> tuple[object, tuple[object, ...]]:
        return _rebuild_samples, (pickle.PickleBuffer(self.data),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Samples) and self.data == other.data


def _rebuild_samples(buffer: memoryview) -> Samples:
    return Samples(buffer)


KEY = "golden/김치.pkl"
"""The key format-2 golden entries were written under (a reader elsewhere sees another key's entry)."""
V2_VALUE = {**VALUE, "samples": Samples(bytes(range(256)) * 20)}
"""Format 2's value: 5 KB of samples travel out of band, after the pickle stream."""


def main() -> None:
    """Write the golden files of the current format. Files of earlier formats (v1_*,
    corrupt_v1_*, unsupported_v1_*) were written by earlier versions of this script and stay
    as they are."""
    _, chunks = entry.encode(V2_VALUE, METADATA, created_at=CREATED_AT, key=KEY)
    v2 = b"".join(bytes(chunk) for chunk in chunks)
    header = entry.read_header(io.BytesIO(v2))
    payload_start = header.header_size
    (blob,) = header.buffers
    files = {
        "v2_entry.jdk": v2,
        # corrupt variants: each must be detected, deleted and counted as a miss
        "corrupt_v2_truncated_payload.jdk": v2[:-7],
        "corrupt_v2_truncated_header.jdk": v2[: payload_start - 40],
        "corrupt_v2_stream_bitflip.jdk": flip(v2, payload_start + header.stream_length // 2),
        "corrupt_v2_buffer_bitflip.jdk": flip(v2, payload_start + blob.offset + 1000),
        "corrupt_v2_padding_bitflip.jdk": flip(v2, payload_start + blob.offset - 1),
        "corrupt_v2_header_bitflip.jdk": flip(v2, 30),
        "corrupt_v2_impossible_length.jdk": with_header(v2, payload_length=10**15),
        "corrupt_v2_buffer_table.jdk": with_header(v2, buffers=[blob.stored_length + 64]),
        "corrupt_v2_mac_length.jdk": with_header(v2, mac_length=10**6),
        "corrupt_v2_trailing_bytes.jdk": v2 + b"\x00",
        # intact but unreadable by this version: must be skipped and kept
        "unsupported_v2_compression.jdk": with_header(v2, compressed={"0": {"codec": "brotli-9"}}),
    }
    future = bytearray(v2)
    struct.pack_into(">H", future, 8, entry.FORMAT_VERSION + 1)
    files["unsupported_v3_future_version.jdk"] = bytes(future)
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    # Through the module, so the golden files name make_golden.Samples, not __main__.Samples.
    import make_golden

    make_golden.main()
