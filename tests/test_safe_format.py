"""The pickle-free "safe" serializer: plain data and arrays round-trip; anything else is
refused at ``put`` naming where it is; loading builds only plain types."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import memory
import numpy as np
import pytest
import xxhash
from forge import entry_bytes, rle_frame, same, zstd_description

from jangdok import Cache, InvalidValue
from jangdok.entry import ALIGNMENT, FORMAT_VERSION, MAGIC, read_header


@pytest.fixture
def safe_cache(cache_url: str, make_settings: Any) -> Cache:
    return Cache.from_settings(make_settings(cache_url, serializer="safe"))


VALUE = {
    "labels": ["안녕하세요", "감사합니다"],
    "sequences": [np.arange(30 * 675, dtype=np.float32).reshape(30, 675) * i for i in range(3)],
    "shape": (30, 675),
    "nested": {"empty": {}, "list": [], "tuple": (), "none": None, "flags": [True, False]},
    "numbers": [0, -1, 2**100, 1.5, -0.0, math.inf, -math.inf],
    "blob": b"\x00\x01raw",
    "mutable": bytearray(b"abc"),
    "scalars": [np.float32(1.25), np.int64(-7), np.bool_(True)],
    "dtypes": [np.zeros((2, 3), dtype=dtype) for dtype in ("<u1", ">i4", "<c16", "|b1", "<U5", "|S3", "<M8[s]")],
    "strided": np.arange(100, dtype=np.int16)[::3],
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
}


def test_plain_data_and_arrays_round_trip(safe_cache: Cache) -> None:
    safe_cache.put("v.pkl", VALUE)
    loaded = safe_cache.get("v.pkl")
    assert same(VALUE, loaded)
    nan = safe_cache.put("nan.pkl", [math.nan]) and safe_cache.get("nan.pkl")
    assert math.isnan(nan[0])


def test_arrays_are_views_of_the_loaded_payload_and_writable(safe_cache: Cache) -> None:
    safe_cache.put("v.pkl", [np.ones(100_000, dtype=np.float64), np.zeros(100_000, dtype=np.float64)])
    first, second = safe_cache.get("v.pkl")
    assert first.base is not None and first.flags.writeable
    first[0] = 5.0
    assert first[0] == 5.0


def test_the_entry_holds_no_pickle(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), serializer="safe")
    cache.put("v.pkl", VALUE)
    data = (tmp_path / "cache" / "v.pkl").read_bytes()
    header = read_header(io.BytesIO(data))
    assert header.serializer == "safe"
    skeleton = json.loads(data[header.header_size: header.header_size + header.stream_length])
    assert skeleton["$d"]["labels"] == ["안녕하세요", "감사합니다"]
    assert b"\x80\x05" not in data[header.header_size: header.header_size + header.stream_length]


@pytest.mark.parametrize("value, named", [
    ({1, 2}, "value under key 'x.pkl' (a builtins.set"),
    ({"a": [1, {2: "b"}]}, "the key 2 of value under key 'x.pkl'['a'][1]"),
    ([OrderedDict(a=1)], "value under key 'x.pkl'[0] (a collections.OrderedDict"),
    ({"model": object()}, "value under key 'x.pkl'['model'] (a builtins.object"),
    ([np.array([1, "a"], dtype=object)], "of dtype object, which holds Python objects"),
    (np.zeros(3, dtype=[("x", "<f4")]), "is a structured dtype"),
    (np.ma.masked_array([1, 2]), "an array subclass"),
    (Path("/tmp"), "pathlib"),
    (1 + 2j, "builtins.complex"),
])
def test_other_types_are_refused_at_put_naming_where_they_are(value: Any, named: str, tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), serializer="safe")
    with pytest.raises(InvalidValue, match="safe serializer cannot store") as raised:
        cache.put("x.pkl", value)
    assert named in str(raised.value) and "serializer='pickle'" in str(raised.value)
    assert not cache.exists("x.pkl")


def test_the_label_caches_of_main_fit_it(tmp_path: Path) -> None:
    """main.py stores each label as a list of float32 arrays of (frames, features)."""
    sequences = [np.random.default_rng(n).standard_normal((30, 675)).astype(np.float32) for n in range(50)]
    cache = Cache(str(tmp_path / "cache"), serializer="safe", compression="zstd")
    cache.put("label.pkl", sequences, metadata={"label": "김치"})
    assert all(np.array_equal(a, b) for a, b in zip(sequences, cache.get("label.pkl"), strict=True))


def test_entries_of_both_serializers_load_whatever_the_setting(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    Cache(folder, serializer="safe").put("safe.pkl", [1, "a"])
    Cache(folder).put("pickled.pkl", {1, 2})
    assert Cache(folder).get("safe.pkl") == [1, "a"]
    assert Cache(folder, serializer="safe").get("pickled.pkl") == {1, 2}


@pytest.mark.parametrize("skeleton", [
    b'{"$x": 1}', b'{"$a": 7, "dtype": "<f4", "shape": [1]}', b'{"$a": 0, "dtype": "O", "shape": [1]}',
    b'{"$d": {"a": {"$t": 5}}}', b'not json',
    b'[{"$b": 0}, {"$b": 0}]',  # one buffer, many copies: a small entry demanding much memory
    b'{"$t": "abc"}', b'{"$d": [["a", 1]]}',
])
def test_a_malformed_safe_entry_is_damage_and_runs_nothing(skeleton: bytes, tmp_path: Path) -> None:
    """Bytes written by hand with serializer "safe": every oddity is CorruptEntry (deleted),
    never an exception of another type and never code."""
    cache = Cache(str(tmp_path / "cache"))
    cache.store.write("x.pkl", _forge(skeleton))
    assert cache.get("x.pkl") is None
    assert cache.stats()["local"].corrupt_deleted == 1


def _forge(skeleton: bytes) -> bytes:
    """An entry with this skeleton as its stream and one 8000-byte buffer, checksums valid."""
    buffer = bytes(8000)
    position = len(skeleton)
    padding = (-position) % ALIGNMENT
    payload = skeleton + bytes(padding) + buffer
    fields = {"serializer": "safe", "checksum": "xxh3_128", "digest": xxhash.xxh3_128_hexdigest(payload),
              "payload_length": len(payload), "stream_length": len(skeleton), "buffers": [len(buffer)],
              "compressed": {}, "mac_length": 0, "created_at": 0.0, "metadata": None, "key": "x.pkl"}
    header_json = json.dumps(fields).encode()
    sealed = struct.pack(">8sHI", MAGIC, FORMAT_VERSION, len(header_json)) + header_json
    lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed))
    lead += bytes((-len(lead)) % ALIGNMENT)
    return lead + payload


def test_pickle_is_never_imported_into_a_safe_load_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(tmp_path / "cache")
    Cache(folder, serializer="safe").put("v.pkl", {"a": np.arange(5000)})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle.loads called for a safe entry")

    monkeypatch.setattr(pickle, "loads", refuse)
    assert np.array_equal(Cache(folder).get("v.pkl")["a"], np.arange(5000))


def test_without_numpy_an_entry_with_arrays_is_unsupported_not_an_import_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = str(tmp_path / "cache")
    Cache(folder, serializer="safe").put("v.pkl", [np.arange(5000)])
    script = ("import sys; sys.modules['numpy'] = None\n"
              "from jangdok import Cache\n"
              f"c = Cache({folder!r})\n"
              "assert c.get('v.pkl') is None\n"
              "assert c.stats()['local'].skipped == 1 and c.exists('v.pkl')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- decompression bombs ----------------------------------------------------------------------------


_LOAD_ONE = memory.IMPORT + """
import json, logging
from jangdok import Cache

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
cache = Cache(sys.argv[1], fallback=False)
reset_peak()
before = peak()
value = cache.get("bomb.pkl")
stats = cache.stats()["local"]
print(json.dumps({"miss": value is None, "memory": peak() - before, "skipped": stats.skipped,
                  "deleted": stats.corrupt_deleted, "kept": cache.exists("bomb.pkl")}))
"""

_OUT_OF_BAND = pickle.dumps(pickle.PickleBuffer(bytearray(8)), protocol=5, buffer_callback=lambda buffer: False)


@pytest.mark.skipif(not memory.MEASURABLE, reason="measures memory through Linux's /proc")
@pytest.mark.parametrize("serializer", ["safe", "pickle"])
@pytest.mark.parametrize("declared", [1_100_000_000, 64 << 30], ids=["33 kB declaring 1.1 GB", "2 MB declaring 64 GB"])
def test_a_decompression_bomb_is_refused_before_anything_is_allocated(serializer: str, declared: int,
                                                                     tmp_path: Path) -> None:
    """zstd's RLE blocks expand 32000:1: the review's unsigned entries made a reader allocate
    1.1 GB, or raise OSError (Cannot allocate memory). Now each is a miss, kept, named in a
    WARNING, and costs the reader next to nothing."""
    frame = rle_frame(declared)
    stream = b'{"$b":0}' if serializer == "safe" else _OUT_OF_BAND
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "bomb.pkl").write_bytes(entry_bytes(stream, [frame], {"0": zstd_description(declared)},
                                                  serializer=serializer, key="bomb.pkl"))
    result = subprocess.run([sys.executable, "-c", _LOAD_ONE, str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures == {**figures, "miss": True, "skipped": 1, "deleted": 0, "kept": True}, figures
    assert figures["memory"] < 100e6, figures
    assert f"declares {declared:,} bytes" in result.stderr and "1024 times" in result.stderr, result.stderr


_UNDER_A_MEMORY_LIMIT = """
import json, logging, resource, sys
folder, limit, ballast = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from jangdok import Cache

held = bytearray(ballast)  # memory this process uses for other things
cache = Cache(folder, fallback=False)
misses = [cache.get(key) is None for key in ("beyond.pkl", "not-now.pkl")]
print(json.dumps({"misses": misses, "skipped": cache.stats()["local"].skipped}))
"""


def _expanding(declared: int, key: str) -> bytes:
    """A safe entry of one compressed buffer declaring ``declared`` bytes, padded to the expansion
    readers accept: what an honest writer makes of that many zeros."""
    from jangdok.entry.limits import MAX_EXPANSION

    frame = rle_frame(declared)
    stream = b'{"$b":0}'.ljust(declared // MAX_EXPANSION + 1, b" ")
    return entry_bytes(stream, [frame], {"0": zstd_description(declared)}, key=key)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs RLIMIT_AS (Linux)")
def test_an_entry_needing_more_memory_than_the_process_can_have_is_a_clear_miss(tmp_path: Path) -> None:
    """Within the expansion bound, an entry may still need more than this machine gives: 3 GB
    under a 2 GB address-space limit is refused before anything is allocated, and 1.5 GB while
    1 GB is in use fails to allocate; both are misses kept for other readers, never an
    OSError or MemoryError."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "beyond.pkl").write_bytes(_expanding(3 << 30, "beyond.pkl"))
    (folder / "not-now.pkl").write_bytes(_expanding(3 << 29, "not-now.pkl"))
    result = subprocess.run([sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, str(folder), str(2 << 30), str(1 << 30)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"misses": [True, True], "skipped": 2}
    assert "more than this process can have (2,147,483,648 bytes)" in result.stderr, result.stderr
    assert f"compressed buffer 0 needs {3 << 29:,} bytes of memory, which this process could not get" \
        in result.stderr, result.stderr


@pytest.mark.parametrize("value, named, why", [
    ({"a": ["ok", "lone \udc80 surrogate"]}, "value under key 'x.pkl'['a'][1]", "lone surrogate"),
    ({"ok": {"\ud800": 1}}, "the key '\\ud800' of value under key 'x.pkl'['ok']", "lone surrogate"),
    ([1, 10**5000], "value under key 'x.pkl'[1]", "5001 digits"),
    ((-(10**4300),), "value under key 'x.pkl'[0]", "4301 digits"),
])
def test_text_and_integers_no_reader_could_parse_are_refused_at_put(value: Any, named: str, why: str,
                                                                   tmp_path: Path) -> None:
    """A lone surrogate cannot be UTF-8, and Python reads at most 4300 digits of an integer from
    text: both escaped put as UnicodeEncodeError and ValueError (on Python 3.10 the integer
    was written, and every newer reader took the entry for damage)."""
    cache = Cache(str(tmp_path / "cache"), serializer="safe")
    with pytest.raises(InvalidValue, match="safe serializer cannot store") as raised:
        cache.put("x.pkl", value)
    assert named in str(raised.value) and why in str(raised.value), str(raised.value)
    assert not cache.exists("x.pkl")


def test_integers_up_to_4300_digits_round_trip(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), serializer="safe")
    value = [10**4299, -(10**4300 - 1), 2**14284]
    cache.put("x.pkl", value)
    assert cache.get("x.pkl") == value
