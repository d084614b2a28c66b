"""The Cache API on both backends: round trips, metadata, stat, keys, corruption, legacy, logs."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import s3_settings
from make_golden import KEY, VALUE

import jangdok
from jangdok import Cache, InvalidKey

DATA = Path(__file__).parent / "data"


def label_data(seed: int = 0, videos: int = 12) -> list[np.ndarray]:
    """Shaped like the seed's per-label cache: a list of (30, 675) float32 sequences."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((30, 675)).astype(np.float32) for _ in range(videos)]


def test_numpy_heavy_values_round_trip(cache: Cache) -> None:
    value = {"X": label_data(), "y": np.arange(12, dtype=np.int64), "label": "김치", "mask": np.eye(3, dtype=bool)}
    info = cache.put("김치_seq30_aug9_maxNone_min10.pkl", value, metadata={"seq": 30, "aug": 9})
    loaded = cache.get("김치_seq30_aug9_maxNone_min10.pkl")
    assert loaded["label"] == "김치"
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded["X"], value["X"], strict=True))
    assert np.array_equal(loaded["y"], value["y"]) and np.array_equal(loaded["mask"], value["mask"])
    assert info.size > 12 * 30 * 675 * 4


def test_missing_key_returns_the_default(cache: Cache) -> None:
    assert cache.get("absent") is None
    assert cache.get("absent", "fallback-value") == "fallback-value"
    assert cache.get_entry("absent") is None
    assert cache.stat("absent") is None
    assert cache.exists("absent") is False
    assert cache.delete("absent") is False


def test_none_and_falsy_values_are_hits(cache: Cache) -> None:
    cache.put("none", None)
    cache.put("zero", 0)
    assert cache.get("none", "default") is None
    assert cache.get_entry("none") is not None
    assert cache.get("zero", "default") == 0


def test_stat_reports_size_time_metadata_and_store(cache: Cache, backend: str) -> None:
    before = time.time()
    cache.put("entry.pkl", label_data(videos=2), metadata={"seq": 30, "labels": ["김치"], "max": None})
    info = cache.stat("entry.pkl")
    assert info is not None
    assert info.metadata == {"seq": 30, "labels": ["김치"], "max": None}
    assert before - 1 <= info.created_at <= time.time() + 1
    assert info.store == {"local": "local", "s3": "S3"}[backend]
    assert info.format_version == 2
    assert info.size == cache.store.stat("entry.pkl").size
    assert info.path.endswith("entry.pkl")
    assert cache.get_entry("entry.pkl").info == info


def test_metadata_handed_out_is_the_callers_to_change(cache: Cache) -> None:
    """A process keeps the headers it wrote and read, so that a hot entry's header is parsed
    once; the metadata each call hands out is still a copy of its own."""
    cache.put("entry.pkl", 1, metadata={"seq": 30, "labels": ["김치"], "nested": {"a": [1]}}).metadata["seq"] = 0
    for read in (lambda: cache.get_entry("entry.pkl").info, lambda: cache.stat("entry.pkl")):
        metadata = read().metadata
        metadata["labels"].append("김밥")
        metadata["nested"]["a"].clear()
        metadata.clear()
    assert cache.get_entry("entry.pkl").info.metadata == {"seq": 30, "labels": ["김치"], "nested": {"a": [1]}}


def test_stat_reads_long_metadata_beyond_the_first_probe(cache: Cache) -> None:
    metadata = {"notes": "긴 설명 " * 20_000}  # ~200 KB header, larger than one header probe
    cache.put("long-header", 1, metadata=metadata)
    assert cache.stat("long-header").metadata == metadata


def test_keys_lists_entries_by_prefix(cache: Cache) -> None:
    for key in ["a.pkl", "chapter1/김치.pkl", "chapter1/김밥.pkl", "chapter2/버거.pkl"]:
        cache.put(key, key)
    assert sorted(cache.keys()) == sorted(["a.pkl", "chapter1/김치.pkl", "chapter1/김밥.pkl", "chapter2/버거.pkl"])
    assert sorted(cache.keys("chapter1/")) == ["chapter1/김밥.pkl", "chapter1/김치.pkl"]


def test_delete_removes_the_entry(cache: Cache) -> None:
    cache.put("k", [1, 2, 3])
    assert cache.delete("k") is True
    assert cache.get("k") is None and not cache.exists("k")


@pytest.mark.parametrize("name", ["legacy_protocol4.pkl", "legacy_protocol5.pkl"])
def test_seed_plain_pickles_load_through_the_cache(cache: Cache, name: str) -> None:
    cache.store.write("old_label_data.pkl", (DATA / name).read_bytes())
    found = cache.get_entry("old_label_data.pkl")
    assert found is not None and found.value == VALUE
    assert found.info.format_version is None and found.info.metadata is None
    assert cache.stat("old_label_data.pkl").format_version is None


def test_seed_style_numpy_pickle_written_without_jangdok_loads(cache: Cache) -> None:
    arrays = label_data(seed=3, videos=4)
    cache.store.write("legacy.pkl", pickle.dumps({"data": arrays, "params": {"seq": 30}}, pickle.HIGHEST_PROTOCOL))
    loaded = cache.get("legacy.pkl")
    assert loaded["params"] == {"seq": 30}
    assert all(np.array_equal(a, b) for a, b in zip(loaded["data"], arrays, strict=True))


def test_mapped_loads_are_judged_as_read_ones_are(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``mmap=True`` (unsigned) maps an entry instead of reading it: a hit, a missing key, another
    key's entry and damage must come out exactly as they do read."""
    folder = tmp_path / "cache"
    cache = Cache(str(folder), mmap=True, fallback=False)
    value = np.arange(200_000, dtype=np.float64)
    cache.put("a.pkl", value)
    loaded = cache.get("a.pkl")
    assert np.array_equal(loaded, value) and cache.stats()[cache.store_label].hits == 1
    del loaded
    assert cache.get("missing.pkl", "miss") == "miss"
    cache.store.write("b.pkl", (folder / "a.pkl").read_bytes())
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("b.pkl", "miss") == "miss"
    assert "was written for key 'a.pkl'" in caplog.text and cache.exists("b.pkl")  # another's: kept
    damaged = bytearray((folder / "a.pkl").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "a.pkl").write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("a.pkl", "miss") == "miss"
    assert not cache.exists("a.pkl")  # damage: deleted, as a read load deletes it


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("corrupt_*")))
def test_corrupt_entries_are_deleted_missed_and_logged(cache: Cache, name: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    cache.store.write(KEY, (DATA / name).read_bytes())
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get(KEY, "miss") == "miss"
    assert not cache.exists(KEY)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "corrupt cache entry deleted" in warning[0].getMessage()
    assert cache.store.path(KEY) in warning[0].getMessage()


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_numpy_entry_is_deleted_then_recomputed(cache: Cache, how: str) -> None:
    cache.put("label.pkl", label_data())
    reader = cache.store.read("label.pkl")
    with reader:
        data = bytearray(reader.read())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10
    cache.store.write("label.pkl", bytes(data))
    assert cache.get("label.pkl") is None
    assert not cache.exists("label.pkl")
    cache.put("label.pkl", label_data())
    assert len(cache.get("label.pkl")) == 12


def test_corrupt_header_is_deleted_by_stat_too(cache: Cache) -> None:
    cache.store.write("damaged.pkl", (DATA / "corrupt_v1_header_bitflip.jdk").read_bytes())
    assert cache.stat("damaged.pkl") is None
    assert not cache.exists("damaged.pkl")


def test_stat_without_repair_only_looks_at_a_damaged_entry(cache: Cache) -> None:
    """``stat(repair=False)`` (what ``jangdok ls -l`` and ``prune`` use) never deletes: the
    damaged entry stays for a reader, or ``jangdok verify --delete``, to act on."""
    cache.store.write("damaged.pkl", (DATA / "corrupt_v1_header_bitflip.jdk").read_bytes())
    assert cache.stat("damaged.pkl", repair=False) is None
    assert cache.exists("damaged.pkl")
    assert getattr(cache.stats().get(cache.store_label), "corrupt_deleted", 0) == 0
    assert cache.stat("damaged.pkl") is None  # repairing: deleted now
    assert not cache.exists("damaged.pkl") and cache.stats()[cache.store_label].corrupt_deleted == 1


def test_damage_replaced_before_its_delete_is_not_counted_or_deleted(cache: Cache, cache_url: str,
                                                                     make_settings: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process saves a good entry between this reader's look at the damaged one and
    its delete: the delete (of the version read) removes nothing, and nothing is counted as
    damage deleted; the good entry stays."""
    cache.store.write("label.pkl", (DATA / "corrupt_v1_header_bitflip.jdk").read_bytes())
    delete = cache.store.delete

    def saved_first(key: str, version: str | None = None) -> bool:
        with Cache.from_settings(make_settings(cache_url)) as other:
            other.put("label.pkl", "good")
        return delete(key, version)

    monkeypatch.setattr(cache.store, "delete", saved_first)
    assert cache.get("label.pkl", "miss") == "miss"
    monkeypatch.undo()
    assert cache.stats()[cache.store_label].corrupt_deleted == 0
    assert cache.get("label.pkl") == "good"


def test_intact_entry_this_process_cannot_unpickle_is_kept(cache: Cache) -> None:
    from test_entry_format import NeedsNewerLibrary

    cache.put("newer-library.pkl", NeedsNewerLibrary())
    assert cache.get("newer-library.pkl", "miss") == "miss"
    assert cache.exists("newer-library.pkl"), "other machines may still read it"


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("unsupported_*")))
def test_entries_from_newer_versions_are_missed_but_kept(cache: Cache, name: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cache.store.write(KEY, (DATA / name).read_bytes())
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get(KEY) is None
    assert cache.exists(KEY)
    assert "kept for other readers" in caplog.text


def test_loads_and_saves_log_which_store_served_them(cache: Cache, backend: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jangdok"):
        cache.put("label_data.pkl", label_data(videos=1))
        cache.get("label_data.pkl")
    label = {"local": "local", "s3": "S3"}[backend]
    path = cache.store.path("label_data.pkl")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"cache saved ({label}): {path}") for m in messages), messages
    assert any(m.startswith(f"cache loaded ({label}): {path}") and " ms" in m for m in messages), messages


def test_invalid_key_fails_before_serializing(cache: Cache) -> None:
    class Unpicklable:
        def __reduce__(self):
            raise AssertionError("serialized before the key was checked")

    with pytest.raises(InvalidKey):
        cache.put("../outside.pkl", Unpicklable())


def test_path_level_functions_on_local_paths(tmp_path: Path) -> None:
    path = str(tmp_path / "cache" / "label_data.pkl")
    assert jangdok.load(path) is None
    info = jangdok.save(path, {"a": 1}, metadata={"seq": 30})
    assert info.path == path and info.store == "local"
    assert jangdok.exists(path) and jangdok.load(path) == {"a": 1}
    assert jangdok.stat(path).metadata == {"seq": 30}
    assert jangdok.remove(path) is True and not jangdok.exists(path)


def test_path_level_functions_on_s3_paths(seaweed, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = s3_settings(seaweed, s3_url)
    for name, value in {"AWS_ACCESS_KEY_ID": settings.access_key_id.reveal(),
                        "AWS_SECRET_ACCESS_KEY": settings.secret_access_key.reveal(),
                        "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    path = jangdok.join(s3_url, "label_data.pkl")
    jangdok.save(path, label_data(videos=2))
    assert jangdok.stat(path).store == "S3"
    assert len(jangdok.load(path)) == 2
    assert jangdok.remove(path) and jangdok.load(path, "gone") == "gone"


def test_an_entry_written_for_another_key_is_never_returned_nor_deleted(cache: Cache,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    cache.put("a.pkl", "the value of a")
    cache.put("b.pkl", "the value of b")
    with cache.store.read("a.pkl") as reader:
        cache.store.write("b.pkl", reader.read())  # a's entry copied by hand over b
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("b.pkl", "miss") == "miss"
        assert cache.stat("b.pkl") is None
    assert "was written for key 'a.pkl'" in caplog.text and "skipped (kept)" in caplog.text
    assert cache.exists("b.pkl"), "it may be the only copy of a's entry"
    assert cache.get("a.pkl") == "the value of a"


def test_one_entry_is_found_under_the_keys_of_every_root(cache: Cache, cache_url: str, backend: str,
                                                         backend_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIR", cache_url)
    cache.put("chapters/x.pkl", [1, 2, 3])
    path = jangdok.join(cache_url, "chapters", "x.pkl")
    assert jangdok.load(path) == [1, 2, 3]  # keyed from the configured root, as the cache keys it
    jangdok.save(path, [4])
    assert cache.get("chapters/x.pkl") == [4]


def test_unicode_forms_of_a_key_are_one_entry(cache: Cache) -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "김치.pkl")
    assert nfd != "김치.pkl"
    cache.put(nfd, "kimchi")
    assert cache.get("김치.pkl") == "kimchi" and list(cache.keys()) == ["김치.pkl"]
    assert cache.stat(nfd).key == "김치.pkl" and cache.delete(nfd) is True


def test_a_key_is_remembered_only_once_it_passed_its_checks(cache: Cache) -> None:
    """A key is checked once where it enters and then remembered: a refused key is refused on
    every call, and nothing that is not a str gets past the check by comparing equal to one."""
    import unicodedata

    class Lookalike:
        def __hash__(self) -> int:
            return hash("good.pkl")

        def __eq__(self, other: object) -> bool:
            return True

    cache.put("good.pkl", "value")
    for bad in ("../escape.pkl", "", "a//b.pkl", ".jangdok/x", b"good.pkl", ["good.pkl"], 5, Lookalike()):
        for _ in range(2):
            with pytest.raises(InvalidKey):
                cache.get(bad)  # type: ignore[arg-type]
    nfd = unicodedata.normalize("NFD", "김치.pkl")
    cache.put(nfd, "kimchi")
    for _ in range(2):
        assert cache.get(nfd) == "kimchi" and cache.get("김치.pkl") == "kimchi" and cache.get("good.pkl") == "value"


def test_an_unpicklable_value_is_refused_naming_key_and_type_and_nothing_is_written(cache: Cache) -> None:
    import threading

    with pytest.raises(jangdok.InvalidValue, match=r"key 'lock.pkl' of type dict cannot be pickled"):
        cache.put("lock.pkl", {"lock": threading.Lock()})
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        cache.put("m.pkl", 1, metadata=[("seq", 30)])
    assert list(cache.keys()) == []


def test_put_now_and_then_removes_stale_temp_files_next_to_its_key(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import jangdok.entries
    from jangdok.location import TEMP_MARKER

    folder = tmp_path / "cache" / "chapters"
    folder.mkdir(parents=True)
    stale, young = folder / f"{TEMP_MARKER}killed-writer", folder / f"{TEMP_MARKER}live-writer"
    stale.write_bytes(b"half an entry")
    young.write_bytes(b"a write in progress")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    monkeypatch.setattr(jangdok.entries, "CLEANUP_CHANCE", 1.0)
    with Cache(tmp_path / "cache", fallback=False) as cache:
        cache.put("chapters/x.pkl", 1)
    assert not stale.exists() and young.exists()


def test_large_multi_array_values_round_trip_out_of_band(cache: Cache) -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, 675))
    value = {
        "float64": [rng.standard_normal((30, 675)) for _ in range(20)],
        "float32": [rng.standard_normal((30, 675)).astype(np.float32) for _ in range(20)],
        "fortran": np.asfortranarray(base),
        "strided": base[::2, ::3],                       # not contiguous: pickled in the stream
        "objects": np.array([{"a": 1}, "김치", None], dtype=object),
        "nested": {"deep": [(base[:5], {"x": np.arange(10_000)})]},
        "small": np.arange(3),
    }
    info = cache.put("big.pkl", value)
    loaded = cache.get("big.pkl")
    for name in ("float64", "float32"):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded[name], value[name], strict=True))
    assert np.array_equal(loaded["fortran"], base) and loaded["fortran"].flags.f_contiguous
    assert np.array_equal(loaded["strided"], value["strided"])
    assert list(loaded["objects"]) == list(value["objects"])
    assert np.array_equal(loaded["nested"]["deep"][0][1]["x"], np.arange(10_000))
    assert loaded["float64"][0].flags.writeable, "loaded arrays are the caller's to modify"
    loaded["float64"][0][0, 0] = 42.0
    assert cache.get("big.pkl")["float64"][0][0, 0] == value["float64"][0][0, 0]
    assert info.size > sum(a.nbytes for a in value["float64"] + value["float32"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compressed_entries_round_trip_and_say_so(cache_url: str, make_settings, dtype) -> None:
    steps = np.random.default_rng(5).standard_normal((40, 30, 675)).astype(dtype) * 0.01
    value = list(np.cumsum(steps, axis=2))  # smooth trajectories: they compress
    with Cache.from_settings(make_settings(cache_url, compression="zstd")) as writer:
        writer.put("label.pkl", value)
        raw = writer.store.stat("label.pkl").size
    with Cache.from_settings(make_settings(cache_url)) as reader:  # reading needs no setting
        entry = reader.get_entry("label.pkl")
    assert all(np.array_equal(a, b) for a, b in zip(entry.value, value, strict=True))
    assert reader.stat("label.pkl").size == raw < sum(a.nbytes for a in value) / 1.1


def test_stats_count_what_this_process_did_per_store(cache: Cache, backend: str) -> None:
    label = {"local": "local", "s3": "S3"}[backend]
    assert cache.stats() == {}
    info = cache.put("a.pkl", label_data(videos=2))
    assert cache.get("a.pkl") is not None and cache.get("missing.pkl") is None
    cache.store.write("b.pkl", b"\x89JDK\r\n\x1a\n damaged")
    assert cache.get("b.pkl") is None
    stats = cache.stats()[label]
    assert (stats.hits, stats.misses, stats.puts, stats.corrupt_deleted) == (1, 2, 1, 1)
    assert stats.bytes_written == info.size == stats.bytes_read
    assert stats.seconds_reading > 0 and stats.seconds_writing > 0
    stats.hits = 99  # a copy: the cache's own counters are untouched
    assert cache.stats()[label].hits == 1


def test_a_forked_child_counts_its_own_stats(cache: Cache) -> None:
    import os

    cache.put("a.pkl", 1)
    cache.get("a.pkl")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only what it does itself
        try:
            cache.get("a.pkl")
            os.write(write, str(sum(tier.hits for tier in cache.stats().values())).encode())
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 16) == b"1"
    os.waitpid(pid, 0)
    assert sum(tier.hits for tier in cache.stats().values()) == 1
