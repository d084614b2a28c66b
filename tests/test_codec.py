"""Per-buffer compression: round trips, when it declines, its JSON description, and damage."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pytest

from jangdok import ConfigError, CorruptEntry, UnsupportedEntry
from jangdok.entry.codec import MIN_SIZE, Compression, compress, decompress_into

RNG_SEED = 20240611


def random_walk(dtype: Any, count: int, seed: int = RNG_SEED) -> np.ndarray:
    """Smooth data like the cached trajectories: a cumulative sum of small random steps."""
    steps = np.random.default_rng(seed).standard_normal(count)
    if np.dtype(dtype).kind == "i":
        return np.cumsum(np.round(steps * 3)).astype(dtype)
    return np.cumsum(steps).astype(dtype)


def roundtrip(view: memoryview, itemsize: int = 1, level: int = 1) -> tuple[bytes, Compression, bytearray]:
    packed = compress(view, itemsize, level)
    assert packed is not None
    data, how = packed
    target = bytearray(how.length)
    decompress_into(memoryview(data), how, memoryview(target))
    return data, how, target


def packed_of(view: Any, itemsize: int = 1) -> tuple[bytes, Compression]:
    packed = compress(memoryview(view), itemsize)
    assert packed is not None
    return packed


# Both sides of the sampling: a buffer small enough to be its own sample, and one sampled in slices.
@pytest.mark.parametrize("count", [40_000, 400_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_arrays_round_trip(dtype: Any, count: int) -> None:
    arr = random_walk(dtype, count)
    data, how, restored = roundtrip(memoryview(arr).cast("B"), arr.itemsize)
    assert restored == arr.tobytes()
    assert how.codec == "zstd" and how.length == arr.nbytes
    assert len(data) < 0.9 * arr.nbytes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smooth_floats_are_shuffled_and_restored_exactly(dtype: Any) -> None:
    arr = random_walk(dtype, 300_000)
    data, how, restored = roundtrip(memoryview(arr).cast("B"), arr.itemsize)
    assert how.shuffle == arr.itemsize
    assert np.array_equal(np.frombuffer(restored, dtype), arr)
    # Shuffling is what makes float64 worth compressing at all; without it, it is declined.
    assert compress(memoryview(arr).cast("B"), itemsize=1) is None or dtype == np.float32


def test_decompresses_straight_into_a_numpy_array() -> None:
    arr = random_walk(np.float64, 50_000).reshape(50, 1000)
    data, how = packed_of(arr, arr.itemsize)  # a multi-dimensional 'd' view is taken as its bytes
    out = np.empty_like(arr)
    decompress_into(memoryview(data), how, memoryview(out))
    assert np.array_equal(out, arr)


def test_fortran_ordered_buffer_is_compressed_as_its_memory() -> None:
    arr = np.asfortranarray(random_walk(np.float32, 60_000).reshape(300, 200))
    data, how = packed_of(arr, arr.itemsize)
    out = np.empty_like(arr)  # also Fortran-ordered
    decompress_into(memoryview(data), how, memoryview(out))
    assert np.array_equal(out, arr)


def test_random_bytes_are_not_compressed() -> None:
    noise = np.random.default_rng(RNG_SEED).integers(0, 256, 1_000_000, dtype=np.uint8).tobytes()
    assert compress(memoryview(noise)) is None
    assert compress(memoryview(noise), itemsize=8) is None


def test_zeros_compress_to_almost_nothing() -> None:
    zeros = bytes(8_000_000)
    data, how, restored = roundtrip(memoryview(zeros), itemsize=8)
    assert len(data) < 8_000_000 / 1000
    assert how.shuffle == 0  # shuffling cannot beat it, so the cheaper plain path is kept
    assert restored == zeros


def test_length_not_a_multiple_of_itemsize_is_never_shuffled() -> None:
    arr = random_walk(np.float32, 100_000)
    odd = arr.tobytes() + b"xyz"
    packed = compress(memoryview(odd), itemsize=4)
    assert packed is None or packed[1].shuffle == 0
    text = b"the same line of text, over and over\n" * 3000 + b"!"
    assert len(text) % 8
    data, how, restored = roundtrip(memoryview(text), itemsize=8)
    assert how.shuffle == 0 and restored == text


def test_tiny_buffers_are_never_compressed() -> None:
    assert compress(memoryview(bytes(MIN_SIZE - 1))) is None
    assert compress(memoryview(b"")) is None
    assert compress(memoryview(bytes(MIN_SIZE))) is not None


def test_higher_level_round_trips() -> None:
    arr = random_walk(np.float64, 100_000)
    _, how, restored = roundtrip(memoryview(arr).cast("B"), 8, level=3)
    assert restored == arr.tobytes() and how.shuffle == 8


def test_non_contiguous_buffer_is_refused() -> None:
    arr = np.zeros((100, 100))[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        compress(memoryview(arr), 8)


def test_read_only_target_is_refused() -> None:
    data, how = packed_of(bytes(10_000))
    with pytest.raises(TypeError, match="writable"):
        decompress_into(memoryview(data), how, memoryview(bytes(10_000)))


# --- without the optional packages ---------------------------------------------------------


def test_without_numpy_nothing_is_shuffled(monkeypatch: pytest.MonkeyPatch) -> None:
    arr = random_walk(np.float32, 200_000)
    monkeypatch.setitem(sys.modules, "numpy", None)
    packed = compress(memoryview(arr.tobytes()), itemsize=4)
    assert packed is None or packed[1].shuffle == 0


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_shuffled_buffers_are_readable_without_numpy(monkeypatch: pytest.MonkeyPatch, dtype: Any) -> None:
    arr = random_walk(dtype, 100_001)
    data, how = packed_of(arr, arr.itemsize)
    assert how.shuffle == arr.itemsize
    monkeypatch.setitem(sys.modules, "numpy", None)
    target = bytearray(how.length)
    decompress_into(memoryview(data), how, memoryview(target))
    assert target == arr.tobytes()


def test_compressing_without_zstandard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ConfigError, match=r'pip install "jangdok\[zstd\]"'):
        compress(memoryview(bytes(100_000)))


def test_reading_without_zstandard_keeps_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    data, how = packed_of(bytes(100_000))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(UnsupportedEntry, match=r"zstd-compressed; install jangdok\[zstd\]"):
        decompress_into(memoryview(data), how, memoryview(bytearray(how.length)))


# --- the JSON description ------------------------------------------------------------------


@pytest.mark.parametrize("how", [Compression("zstd", 0, 0), Compression("zstd", 8, 48_600_000),
                                 Compression("zstd", 2, 4098)])
def test_compression_round_trips_through_json(how: Compression) -> None:
    obj = json.loads(json.dumps(how.to_json()))
    assert obj == {"codec": "zstd", "shuffle": how.shuffle, "length": how.length}
    assert Compression.from_json(obj) == how


def test_a_real_description_round_trips_through_json() -> None:
    arr = random_walk(np.float64, 50_000)
    data, how = packed_of(arr, 8)
    again = Compression.from_json(json.loads(json.dumps(how.to_json())))
    target = bytearray(again.length)
    decompress_into(memoryview(data), again, memoryview(target))
    assert target == arr.tobytes()


@pytest.mark.parametrize("obj", [
    None, [], ["zstd", 8, 1024], "zstd", 3,
    {}, {"shuffle": 0, "length": 10}, {"codec": 1, "shuffle": 0, "length": 10},
    {"codec": "zstd", "length": 10}, {"codec": "zstd", "shuffle": 0},
    {"codec": "zstd", "shuffle": -8, "length": 16}, {"codec": "zstd", "shuffle": 1, "length": 16},
    {"codec": "zstd", "shuffle": 8.0, "length": 16}, {"codec": "zstd", "shuffle": True, "length": 16},
    {"codec": "zstd", "shuffle": "8", "length": 16}, {"codec": "zstd", "shuffle": 8, "length": 12},
    {"codec": "zstd", "shuffle": 0, "length": -1}, {"codec": "zstd", "shuffle": 0, "length": 1.5},
    {"codec": "zstd", "shuffle": 0, "length": None}, {"codec": "zstd", "shuffle": 0, "length": False},
])
def test_malformed_descriptions_are_corrupt(obj: Any) -> None:
    with pytest.raises(CorruptEntry):
        Compression.from_json(obj)


@pytest.mark.parametrize("obj", [
    {"codec": "lz4", "shuffle": 0, "length": 10},
    {"codec": "ZSTD", "shuffle": 0, "length": 10},
    {"codec": "brotli", "quality": 11},  # another codec's fields are not judged by zstd's rules
])
def test_unknown_codecs_are_unsupported(obj: Any) -> None:
    with pytest.raises(UnsupportedEntry, match="newer version"):
        Compression.from_json(obj)


def test_unknown_fields_are_unsupported_not_corrupt() -> None:
    with pytest.raises(UnsupportedEntry, match="dictionary"):
        Compression.from_json({"codec": "zstd", "shuffle": 0, "length": 10, "dictionary": "abc"})


def test_unknown_codec_passed_directly_is_unsupported() -> None:
    with pytest.raises(UnsupportedEntry, match="'lz4'"):
        decompress_into(memoryview(b"x"), Compression("lz4", 0, 1), memoryview(bytearray(1)))


# --- damage --------------------------------------------------------------------------------


def damaged_variants(data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    return {
        "bit flip": data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:],
        "flipped checksum": data[:-1] + bytes([data[-1] ^ 0x01]),
        "truncated": data[:middle],
        "last byte missing": data[:-1],
        "header only": data[:6],
        "empty": b"",
        "not zstd": b"plain bytes, not a zstd frame" * 10,
        "trailing garbage": data + b"xyz",
        "two frames": data + data,
    }


@pytest.mark.parametrize("kind", list(damaged_variants(b"x" * 100)))
@pytest.mark.parametrize("shuffled", [False, True])
def test_damaged_data_is_corrupt(kind: str, shuffled: bool) -> None:
    arr = random_walk(np.float32, 20_000) if shuffled else np.frombuffer(b"abcd" * 10_000, np.uint8)
    data, how = packed_of(arr, arr.itemsize)
    assert (how.shuffle != 0) == shuffled
    target = bytearray(how.length)
    with pytest.raises(CorruptEntry):
        decompress_into(memoryview(damaged_variants(data)[kind]), how, memoryview(target))


@pytest.mark.parametrize("delta", [-1, 1, -4096])
def test_target_of_wrong_length_is_corrupt(delta: int) -> None:
    data, how = packed_of(bytes(100_000))
    with pytest.raises(CorruptEntry, match="target is"):
        decompress_into(memoryview(data), how, memoryview(bytearray(how.length + delta)))


def test_description_disagreeing_with_the_frame_is_corrupt() -> None:
    data, how = packed_of(bytes(100_000))
    wrong = Compression("zstd", 0, how.length - 8)
    with pytest.raises(CorruptEntry, match="declares 100000 bytes"):
        decompress_into(memoryview(data), wrong, memoryview(bytearray(wrong.length)))
    bad_shuffle = Compression("zstd", 7, how.length - 1)
    with pytest.raises(CorruptEntry, match="shuffle 7"):
        decompress_into(memoryview(data), bad_shuffle, memoryview(bytearray(bad_shuffle.length)))


@pytest.mark.parametrize("shuffled", [False, True])
def test_any_truncation_or_byte_flip_is_caught(shuffled: bool) -> None:
    """Every prefix is refused; every single-byte change is refused or still restores the buffer
    (a change in, say, the frame's window size field can be harmless)."""
    arr = random_walk(np.float32, 20_000) if shuffled else np.frombuffer(b"abcdefgh" * 2_000, np.uint8)
    data, how = packed_of(arr, arr.itemsize)
    original = arr.tobytes()
    for cut in range(len(data)):
        with pytest.raises(CorruptEntry):
            decompress_into(memoryview(data[:cut]), how, memoryview(bytearray(how.length)))
    rng = np.random.default_rng(RNG_SEED)
    for pos in sorted({*range(min(len(data), 64)), *rng.integers(0, len(data), 300).tolist()}):
        flipped = bytearray(data)
        flipped[pos] ^= int(rng.integers(1, 256))
        target = bytearray(how.length)
        try:
            decompress_into(memoryview(flipped), how, memoryview(target))
        except CorruptEntry:
            continue
        assert target == original, f"a change at byte {pos} went unnoticed"


def test_an_unrepresentative_sample_does_not_force_compression() -> None:
    """The sample (start, middle and end) compresses well, the rest is noise: stored as is."""
    size, piece = 4_000_000, 64 * 1024
    buf = np.random.default_rng(RNG_SEED).integers(0, 256, size, dtype=np.uint8)
    middle = (size - piece) // 2
    for start in (0, middle, size - piece):
        buf[start:start + piece] = 0
    assert compress(memoryview(buf)) is None
    buf[:] = 0
    assert compress(memoryview(buf)) is not None
