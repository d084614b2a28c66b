"""The pickle-free "safe" serializer: plain data and arrays round-trip; anything else is
refused at ``put`` naming where it is; loading builds only plain types."""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        return type(a) is type(b) and a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a == b) and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def test_plain_data_and_arrays_round_trip(safe_cache: Cache) -> None:
    safe_cache.put("v.pkl", VALUE)
    loaded = safe_cache.get("v.pkl")
    assert _same(VALUE, loaded)
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
    b'[' * 100_000 + b']' * 100_000, b'{"$d": {"a": {"$t": 5}}}', b'not json',
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
