"""The store contract, run against every backend (the ``backend`` fixture: local and s3)."""

from __future__ import annotations

import os

import pytest

from jangdok import InvalidRange
from jangdok.stores import Store


def read_all(store: Store, key: str, start: int = 0, stop: int | None = None) -> bytes | None:
    reader = store.read(key, start, stop)
    if reader is None:
        return None
    with reader:
        data = reader.read()
    assert len(data) == reader.size
    return data


def test_missing_key_is_not_an_error(store: Store) -> None:
    assert store.read("absent.pkl") is None
    assert store.stat("absent.pkl") is None
    assert store.exists("absent.pkl") is False
    assert store.delete("absent.pkl") is False
    assert list(store.list()) == []


def test_write_then_read_stat_exists_delete(store: Store) -> None:
    store.write("label_data.pkl", b"hello jangdok")
    assert read_all(store, "label_data.pkl") == b"hello jangdok"
    info = store.stat("label_data.pkl")
    assert info is not None and info.key == "label_data.pkl" and info.size == 13 and info.modified > 0
    assert store.exists("label_data.pkl")
    assert store.delete("label_data.pkl") is True
    assert store.read("label_data.pkl") is None
    assert store.delete("label_data.pkl") is False


def test_overwrite_replaces_the_whole_object(store: Store) -> None:
    store.write("k", b"a much longer first value")
    store.write("k", b"short")
    assert read_all(store, "k") == b"short"


def test_iterable_of_chunks_is_written_in_order(store: Store) -> None:
    chunks = [b"alpha-", bytearray(b"beta-"), memoryview(b"gamma"), b""]
    store.write("chunked", iter(chunks))
    assert read_all(store, "chunked") == b"alpha-beta-gamma"


def test_empty_value(store: Store) -> None:
    store.write("empty", b"")
    assert read_all(store, "empty") == b""
    assert store.stat("empty").size == 0


def test_range_reads(store: Store) -> None:
    store.write("r", bytes(range(100)))
    assert read_all(store, "r", 0, 10) == bytes(range(10))
    assert read_all(store, "r", 90) == bytes(range(90, 100))
    assert read_all(store, "r", 95, 200) == bytes(range(95, 100))
    assert read_all(store, "r", 100) == b""


@pytest.mark.parametrize(("start", "stop"), [(0, 0), (50, 50), (100, 100), (300, 300)])
def test_empty_ranges_read_as_empty_on_every_backend(store: Store, start: int, stop: int) -> None:
    store.write("r", bytes(range(100)))
    reader = store.read("r", start, stop)
    assert reader is not None and reader.size == 0 and reader.info.size == 100
    with reader:
        assert reader.read() == b""
    assert store.read("missing", start, stop) is None


@pytest.mark.parametrize(("start", "stop"), [(-1, None), (-5, 10), (10, 5)])
def test_negative_or_reversed_ranges_are_refused_alike(store: Store, start: int, stop: int | None) -> None:
    store.write("r", bytes(range(100)))
    with pytest.raises(InvalidRange, match=r"byte range \[.*\) is invalid"):
        store.read("r", start, stop)


def test_nested_and_non_ascii_keys_list_as_written(store: Store) -> None:
    keys = ["김치_seq30_aug9_maxNone_min10.pkl", "chapters/음식/버거.pkl", "a b.pkl", "x/y/z.bin"]
    for number, key in enumerate(keys):
        store.write(key, str(number).encode())
    assert sorted(info.key for info in store.list()) == sorted(keys)
    assert sorted(info.key for info in store.list("chapters/")) == ["chapters/음식/버거.pkl"]
    assert sorted(info.key for info in store.list("x/y")) == ["x/y/z.bin"]
    assert [read_all(store, key) for key in keys] == [b"0", b"1", b"2", b"3"]


def test_large_value_round_trips(store: Store) -> None:
    payload = bytes(range(256)) * (12 * 1024 * 1024 // 256 + 7)  # ~12 MB, not a multiple of anything
    store.write("big", [payload[:3_000_001], payload[3_000_001:]])
    assert read_all(store, "big") == payload
    assert store.stat("big").size == len(payload)


def test_capabilities_describe_the_backend(store: Store, backend: str) -> None:
    assert store.capabilities.shared is (backend == "s3")
    assert store.capabilities.range_reads is True
    assert store.capabilities.conditional_delete is True  # SeaweedFS enforces If-Match on DELETE
    assert store.name == {"local": "local", "s3": "S3"}[backend]


def test_invalid_keys_are_refused_before_any_io(store: Store) -> None:
    from jangdok import InvalidKey

    for key in ["../escape", "a/../../b", "", "/abs", "bad\x00name", "a//b"]:
        with pytest.raises(InvalidKey):
            store.write(key, b"x")
        with pytest.raises(InvalidKey):
            store.read(key)


def test_versions_identify_what_was_read(store: Store) -> None:
    store.write("v", b"first")
    first = store.stat("v")
    reader = store.read("v", 0, 2)
    with reader:
        assert reader.read() == b"fi"
    assert reader.info.version == first.version and reader.info.size == 5, "info describes the whole object"
    store.write("v", b"second, longer")
    second = store.stat("v")
    assert second.version != first.version
    assert store.delete("v", version=first.version) is False, "a replaced object is not deleted"
    assert store.exists("v")
    assert store.delete("v", version=second.version) is True
    assert not store.exists("v")


def test_listing_skips_names_that_are_not_keys(store: Store, backend: str, tmp_path) -> None:
    store.write("good.pkl", b"1")
    if backend == "local":
        with open(os.path.join(store.location.root, "back\\slash"), "wb") as handle:
            handle.write(b"written by another program")
    assert [info.key for info in store.list()] == ["good.pkl"]
