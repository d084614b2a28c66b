"""Entries planted to cost a reader: a crash after a refusal, CPU, recursion, memory, dates.

Each is written by hand (``forge``), as someone who can write the folder but holds no key
would, and each must be a miss or a jangdok error within bounds its bytes set.
"""

from __future__ import annotations

import gc
import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard
from forge import entry_bytes

from jangdok import Cache, CorruptEntry, InvalidValue, UnsupportedEntry, entry
from jangdok.entry import MAGIC, read_header
from jangdok.entry.codec import Compression
from jangdok.entry.limits import BYTES_PER_LIST, BYTES_PER_OBJECT, MAX_NESTING

_RANDOM = os.urandom(64) * 1024  # 64 KiB that zstd shrinks 1000 times


def _frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(data)


def _compressed_safe(length: int, shuffle: int = 0, frame: bytes | None = None, key: str = "x.pkl") -> bytes:
    """A safe entry of one zstd buffer described as ``length`` bytes shuffled by ``shuffle``."""
    return entry_bytes(b'{"$d":{"z":{"$b":0}}}', [_frame(_RANDOM) if frame is None else frame],
                       {"0": {"codec": "zstd", "shuffle": shuffle, "length": length}}, key=key)


# -- 1. a refusal leaves nothing exported for the garbage collector -----------------------------

_REFUSE_THEN_COLLECT = """
import gc, sys
from jangdok import Cache
cache = Cache(sys.argv[1], serializer="safe")
for key in ("length.pkl", "checksum.pkl"):
    assert cache.get(key) is None, key
assert cache.stats()["local"].corrupt_deleted == 2
print("collected", gc.collect(), flush=True)
"""


def test_a_refused_compressed_entry_leaves_nothing_for_the_collector_to_crash_on(tmp_path: Path) -> None:
    """A zstd buffer whose description disagrees with its frame, and one whose frame fails its
    checksum: refused, then the next collection crashed Python 3.10 and 3.11 (SIGSEGV), for it
    cleared a memoryview that a PickleBuffer in the refusal's frames still exported."""
    frame = bytearray(_frame(_RANDOM))
    frame[-1] ^= 0xFF  # the frame's content checksum
    (tmp_path / "length.pkl").write_bytes(_compressed_safe(len(_RANDOM) + 64, key="length.pkl"))
    (tmp_path / "checksum.pkl").write_bytes(_compressed_safe(len(_RANDOM), frame=bytes(frame), key="checksum.pkl"))
    result = subprocess.run([sys.executable, "-c", _REFUSE_THEN_COLLECT, str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "collected" in result.stdout and "BufferError" not in result.stderr, result.stderr[-3000:]


def test_damage_is_read_again_with_nothing_of_the_first_read_held(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage is believed when a second read agrees; the refusal of the first read kept its
    tracebacks, whose frames held the whole entry (and views of it) through the second."""
    cache = Cache(str(tmp_path), serializer="safe")
    cache.store.write("x.pkl", _compressed_safe(len(_RANDOM) + 64))
    held: list[int] = []
    read = cache.store.read

    def counting(key: str, *args: Any, **kwargs: Any) -> Any:
        held.append(sum(isinstance(thing, types.FrameType) and "jangdok" in thing.f_code.co_filename
                        for thing in gc.get_objects()))
        return read(key, *args, **kwargs)

    monkeypatch.setattr(cache.store, "read", counting)
    gc.collect()
    gc.disable()  # what is let go must go by itself, not by a collection
    try:
        assert cache.get("x.pkl") is None
    finally:
        gc.enable()
    assert len(held) >= 2 and not any(held) and cache.stats()["local"].corrupt_deleted == 1, held


# -- 2. shuffling only by the element sizes writers use -----------------------------------------


@pytest.mark.parametrize("shuffle", [3, 16, 1 << 16, -8, 1])
def test_a_shuffle_no_writer_uses_is_refused_as_damage(shuffle: int) -> None:
    with pytest.raises(CorruptEntry, match="shuffle"):
        Compression.from_json({"codec": "zstd", "shuffle": shuffle, "length": 1 << 16})


def test_a_buffer_described_as_one_huge_element_costs_no_cpu(tmp_path: Path) -> None:
    """Un-shuffling steps once per byte of an element: an element the size of the buffer made
    a reader spend seconds per megabyte."""
    data = _RANDOM * 32  # 2 MiB
    (tmp_path / "x.pkl").write_bytes(_compressed_safe(len(data), len(data), _frame(data)))
    cache = Cache(str(tmp_path))
    started = time.process_time()
    assert cache.get("x.pkl") is None
    assert time.process_time() - started < 0.5
    assert cache.stats()["local"].corrupt_deleted == 1


# -- 3. nesting: the same limit on every Python -------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = ([value], (value,), {"k": value})[level % 3]
    return value


def _deep_in_the_stack(frames: int, then: Any) -> Any:
    return then() if frames == 0 else _deep_in_the_stack(frames - 1, then)


def test_values_and_metadata_nested_beyond_the_limit_are_refused_at_put(tmp_path: Path) -> None:
    """As deep as MAX_NESTING round-trips, even read from deep in a caller's stack (a reader on
    3.10 takes two frames per level); one level more is refused at put, on every version."""
    cache = Cache(str(tmp_path), serializer="safe")
    cache.put("deep.pkl", _nested(MAX_NESTING), metadata={"m": _nested(MAX_NESTING - 1)})
    assert _deep_in_the_stack(sys.getrecursionlimit() // 3, lambda: cache.get("deep.pkl")) == _nested(MAX_NESTING)
    with pytest.raises(InvalidValue, match=f"nested too deeply \\(more than {MAX_NESTING}"):
        cache.put("deeper.pkl", _nested(MAX_NESTING + 1))
    with pytest.raises(InvalidValue, match="metadata for key 'deeper.pkl' is nested too deeply"):
        cache.put("deeper.pkl", 1, metadata={"m": _nested(MAX_NESTING)})
    assert not cache.exists("deeper.pkl")


def test_an_entry_nested_beyond_what_this_reader_parses_is_kept_as_unsupported(tmp_path: Path) -> None:
    """An older writer (or 3.13's) could nest deeper than a 3.10 reader parses: a reader's limit,
    so kept for other readers like pickle's same case, never deleted as damage nor a raw
    RecursionError."""
    stream = b"[" * 5000 + b"]" * 5000
    (tmp_path / "deep.pkl").write_bytes(entry_bytes(stream, key="deep.pkl"))
    cache = Cache(str(tmp_path))
    assert cache.get("deep.pkl") is None
    assert cache.stats()["local"].skipped == 1 and cache.exists("deep.pkl")
    with pytest.raises(UnsupportedEntry, match="recursion limit"):
        _decode(tmp_path / "deep.pkl")


def _decode(path: Path) -> Any:
    data = path.read_bytes()
    return entry.decode(io.BytesIO(data), len(data)).value


# -- 4. what a skeleton may build is bounded by its bytes --------------------------------------


def test_a_skeleton_of_empty_lists_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """3 bytes of JSON make an 80-byte list: 8 MB of them took a reader 400 MB and 6 s."""
    stream = b"[" + b"[]," * 300_000 + b"[]]"
    (tmp_path / "x.pkl").write_bytes(entry_bytes(stream))
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedEntry, match="more than one per 8 and 24 bytes"):
            _decode(tmp_path / "x.pkl")
        _, most = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert most < 4 * len(stream), most


def test_a_value_of_many_small_containers_is_padded_and_loads_within_its_bytes(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path), serializer="safe")
    value = [[] for _ in range(100_000)] + [{"a": (1,)} for _ in range(20_000)]
    cache.put("x.pkl", value)
    size = cache.stat("x.pkl").size
    assert size >= 120_000 * BYTES_PER_LIST + 60_000 * BYTES_PER_OBJECT - (64 << 10)  # padded, but for 64 KiB
    tracemalloc.start()
    try:
        assert _decode(Path(cache.store.path("x.pkl"))) == value
        _, most = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert most < 14 * size, (most, size)


# -- 5. a header is bounded before it is parsed -------------------------------------------------


def test_a_forged_header_of_empty_lists_costs_a_signing_reader_nothing(tmp_path: Path) -> None:
    """Its JSON was parsed whole before the MAC was looked at: 16 MB of "[]," cost 4 s and 460 MB."""
    lists = [[] for _ in range(700_000)]
    body = entry_bytes(b"\x80\x05K\x01." + b" " * (4 << 20), serializer="pickle", key="x.pkl",
                       fields={"metadata": {"x": lists}, "mac": "hmac-sha256", "mac_length": 32, "key_id": "0" * 12})
    (tmp_path / "x.pkl").write_bytes(body)
    cache = Cache(str(tmp_path), signing_keys="k" * 32)
    tracemalloc.start()
    started = time.monotonic()
    try:
        assert cache.get("x.pkl") is None
        _, most = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1 and most < 3 * len(body), most
    assert cache.stats()["local"].skipped == 1 and cache.exists("x.pkl")


def test_a_header_longer_than_its_entry_allows_is_refused_before_it_is_read() -> None:
    """A header holds metadata (1 MiB), a few fields and a little per buffer, and every buffer
    costs the payload bytes: 12 MB of header with no payload to speak of is damage."""
    header_len = 12 << 20
    data = struct.pack(">8sHI", MAGIC, 2, header_len) + b" " * (header_len + 100)

    class Counting(io.BytesIO):
        asked = 0

        def readinto(self, buffer: Any) -> int:
            Counting.asked += len(buffer)
            return super().readinto(buffer)

    with pytest.raises(CorruptEntry, match=f"header length {header_len}"):
        read_header(Counting(data), len(data))
    assert Counting.asked == 0


# -- 6. times a date can show -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["created_at", "expires_at"])
@pytest.mark.parametrize(("text", "problem"), [
    ("1e999", "is not a time between years 1 and 9999"), ("-1e999", "is not a time between years 1 and 9999"),
    ("1e300", "is not a time between years 1 and 9999"), ("253402300800", "is not a time between years 1 and 9999"),
    ("-62135596801", "is not a time between years 1 and 9999"),
    ("true", "is not a number"), ('"12"', "is not a number"),  # JSON's true is Python's 1
])
def test_a_header_time_beyond_any_date_is_damage(field: str, text: str, problem: str, tmp_path: Path) -> None:
    """JSON's 1e999 reads as infinity: stat showed it, and ``jangdok stat`` died of OverflowError."""
    fields = {"serializer": "pickle", "checksum": "xxh3_128", "digest": xxhash.xxh3_128_hexdigest(b"\x80\x05K\x01."),
              "payload_length": 5, "stream_length": 5, "buffers": [], "compressed": {}, "mac_length": 0,
              "created_at": 1.0, "metadata": None, "key": "x.pkl", field: "TIME"}
    header = json.dumps(fields, separators=(",", ":")).replace('"TIME"', text).encode()
    (tmp_path / "x.pkl").write_bytes(_sealed(header) + b"\x80\x05K\x01.")
    with pytest.raises(CorruptEntry, match=f"{field} .* {problem}"):
        _decode(tmp_path / "x.pkl")
    assert Cache(str(tmp_path)).stat("x.pkl") is None and not (tmp_path / "x.pkl").exists()


def _sealed(header: bytes) -> bytes:
    lead = struct.pack(">8sHI", MAGIC, 2, len(header)) + header
    lead += struct.pack(">I", xxhash.xxh32_intdigest(lead))
    return lead + bytes(-len(lead) % 64)


def test_a_ttl_beyond_any_date_is_refused_at_put(tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="expiry time .* is not a time between years 1 and 9999"):
        Cache(str(tmp_path)).put("x.pkl", 1, ttl=1e15)

