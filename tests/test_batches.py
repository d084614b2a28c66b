"""Batches: ``get_many``, ``get_entries`` and ``put_many`` key by key as the single calls, with
a bounded number of requests in flight and no thread left after; ``fn.map`` of a memoized
function; the local tier revalidating a batch together; and main.py's batch load.

S3 is a real SeaweedFS, reached through tests/faultproxy.py where a request must fail for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy
from fleet import fleet_env
from helpers import s3_settings
from seaweed import SeaweedServer

import main as chapter_main
from chapter_generator import cache_file_name
from jangdok import AccessDenied, BatchError, Cache, InvalidKey, InvalidValue, JangdokError, StoreUnavailable
from jangdok.batch import run
from jangdok.stores import LOCAL_TIER, TieredStore


def _value(n: int) -> dict[str, Any]:
    return {"n": n, "array": np.full(1000, n, dtype=np.int64)}


def _same(found: Any, n: int) -> bool:
    return found["n"] == n and np.array_equal(found["array"], _value(n)["array"])


def _damage(cache: Cache, key: str) -> None:
    """Flip a byte in the middle of an entry, through the store (a bit rotted on disk)."""
    with cache.store.read(key) as reader:
        data = bytearray(reader.read())
    data[len(data) // 2] ^= 0xFF
    cache.store.write(key, bytes(data))


def _counting(client: Any, operation: str) -> dict[str, int]:
    """Count the ``operation`` requests being sent at once by ``client`` (each held 50 ms, so
    requests sent together overlap): ``peak`` is the most at one time."""
    lock = threading.Lock()
    seen = {"now": 0, "peak": 0, "total": 0}

    def sending(**_: Any) -> None:
        with lock:
            seen["now"] += 1
            seen["total"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        time.sleep(0.05)
        with lock:
            seen["now"] -= 1

    client.meta.events.register(f"before-send.s3.{operation}", sending)
    return seen


def _other_threads() -> set[threading.Thread]:
    return set(threading.enumerate())


# -- per-key results --------------------------------------------------------------------------------


def test_get_many_returns_the_hits_by_the_keys_given_in_their_order(cache: Cache) -> None:
    cache.put_many({f"k/{n}.pkl": _value(n) for n in range(3)})
    found = cache.get_many(["k/2.pkl", "k/missing.pkl", "k/0.pkl", "k/1.pkl"])
    assert list(found) == ["k/2.pkl", "k/0.pkl", "k/1.pkl"]
    assert all(_same(found[f"k/{n}.pkl"], n) for n in range(3))
    entries = cache.get_entries(["k/1.pkl", "k/missing.pkl"])
    assert list(entries) == ["k/1.pkl"] and entries["k/1.pkl"].info.key == "k/1.pkl"
    assert _same(entries["k/1.pkl"].value, 1)
    assert cache.get_many([]) == {} and cache.put_many({}) == {}


def test_keys_naming_one_entry_are_read_once_and_each_is_answered(cache: Cache) -> None:
    composed, decomposed = "김치.pkl", unicodedata.normalize("NFD", "김치.pkl")
    assert composed != decomposed
    cache.put(composed, _value(7))
    found = cache.get_many([decomposed, composed, decomposed])
    assert list(found) == [decomposed, composed] and found[composed] is found[decomposed]
    assert cache.stats()[cache.store_label].hits == 1


def test_put_many_saves_each_value_as_put_does(cache: Cache) -> None:
    infos = cache.put_many({"a.pkl": _value(1), "b.pkl": _value(2)}, metadata={"seq": 30})
    assert list(infos) == ["a.pkl", "b.pkl"]
    assert all(info.metadata == {"seq": 30} and info.size > 0 for info in infos.values())
    assert _same(cache.get("a.pkl"), 1) and cache.stat("b.pkl").metadata == {"seq": 30}
    with pytest.raises(InvalidKey, match="name one entry"):  # which value would win?
        cache.put_many({"김치.pkl": 1, unicodedata.normalize("NFD", "김치.pkl"): 2})
    assert not cache.exists("김치.pkl")


def test_a_bad_key_fails_the_whole_call_before_any_request(seaweed: SeaweedServer, s3_url: str,
                                                           proxy: FaultProxy) -> None:
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint))
    with pytest.raises(InvalidKey, match=r"\.\."):
        cache.get_many(["good.pkl", "../escape.pkl"])
    with pytest.raises(InvalidKey):
        cache.put_many({"good.pkl": 1, "a//b.pkl": 2})
    with pytest.raises(TypeError, match="single key"):
        cache.get_many("good.pkl")
    assert proxy.requests == [] and proxy.connections == 0  # not even the store's opening


def test_a_damaged_entry_in_a_batch_is_deleted_and_missed_like_in_get(cache: Cache) -> None:
    cache.put_many({"a.pkl": _value(1), "b.pkl": _value(2)})
    _damage(cache, "b.pkl")
    found = cache.get_many(["a.pkl", "b.pkl"])
    assert list(found) == ["a.pkl"] and _same(found["a.pkl"], 1)
    assert not cache.exists("b.pkl")
    stats = cache.stats()[cache.store_label]
    assert (stats.hits, stats.misses, stats.corrupt_deleted) == (1, 1, 1)


def test_stats_count_each_key(cache: Cache) -> None:
    infos = cache.put_many({f"{n}.pkl": _value(n) for n in range(5)})
    cache.get_many([f"{n}.pkl" for n in range(8)])
    stats = cache.stats()[cache.store_label]
    assert (stats.puts, stats.hits, stats.misses) == (5, 5, 3)
    assert stats.bytes_read == stats.bytes_written == sum(info.size for info in infos.values())


def test_progress_follows_the_bytes_of_the_whole_batch(cache: Cache) -> None:
    calls: list[tuple[int, int]] = []
    infos = cache.put_many({f"{n}.pkl": _value(n) for n in range(6)}, progress=lambda *call: calls.append(call))
    size = sum(info.size for info in infos.values())
    assert calls[-1] == (size, size) and all(done <= total for done, total in calls)
    calls.clear()
    cache.get_many([*infos, "missing.pkl"], progress=lambda *call: calls.append(call))
    assert calls[-1] == (size, size) and all(done <= total for done, total in calls)


# -- failures -----------------------------------------------------------------------------------------


@pytest.fixture
def writer(seaweed: SeaweedServer, s3_url: str) -> Iterator[Cache]:
    """Another machine writing entries straight to S3."""
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        yield cache


@pytest.fixture
def through_proxy(seaweed: SeaweedServer, s3_url: str, proxy: FaultProxy) -> Iterator[Cache]:
    """A cache on S3 whose requests pass through ``proxy``, one attempt each, four at once."""
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, max_attempts=1, concurrency=4)
    with Cache.from_settings(settings) as cache:
        yield cache


def _refused(body: bytes) -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b"<Message>injected by the test proxy</Message></Error>")


def test_a_store_failure_on_some_keys_is_reported_and_the_others_kept(through_proxy: Cache, writer: Cache,
                                                                      proxy: FaultProxy) -> None:
    keys = [f"{n}.pkl" for n in range(12)]
    writer.put_many({key: _value(n) for n, key in enumerate(keys)})
    proxy.rewrite_answers(r"^GET \S+/(3|7|11)\.pkl ", _refused, status=403)  # these three, every time
    cache = through_proxy
    with pytest.raises(BatchError) as raised:
        cache.get_many(keys)
    failure = raised.value
    assert list(failure.errors) == ["3.pkl", "7.pkl", "11.pkl"]
    assert all(isinstance(exc, AccessDenied) for exc in failure.errors.values())
    assert list(failure.results) == [key for key in keys if key not in failure.errors]  # in the order given
    assert all(_same(value, keys.index(key)) for key, value in failure.results.items())
    assert "3 of 12 keys" in str(failure) and "'3.pkl': AccessDenied" in str(failure)
    assert cache.stats()["S3"].hits == 9
    assert len(writer.get_many(keys)) == 12  # nothing was deleted for it


def test_a_save_failure_on_some_keys_is_reported_and_the_others_saved(through_proxy: Cache,
                                                                      proxy: FaultProxy) -> None:
    proxy.rewrite_answers(r"^PUT \S+/(2|5)\.pkl ", lambda body: body, status=503)
    cache = through_proxy
    items: dict[str, Any] = {f"{n}.pkl": _value(n) for n in range(8)}
    items["lambda.pkl"] = lambda: None  # cannot be stored, whatever the store says
    with pytest.raises(BatchError) as raised:
        cache.put_many(items)
    errors = raised.value.errors
    assert list(errors) == ["2.pkl", "5.pkl", "lambda.pkl"]
    assert isinstance(errors["lambda.pkl"], InvalidValue)
    assert all(isinstance(errors[key], StoreUnavailable) for key in ("2.pkl", "5.pkl"))
    saved = raised.value.results
    assert list(saved) == [key for key in items if key not in errors]
    assert all(_same(value, int(key[:-4])) for key, value in cache.get_many(list(saved)).items())


def test_any_other_error_stops_the_batch_and_is_raised_once_every_thread_is_done() -> None:
    before = _other_threads()
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        time.sleep(0.01)
        if item == 5:
            raise RuntimeError("a bug")
        if item % 3 == 0:
            raise StoreUnavailable(f"item {item}")
        return item

    with pytest.raises(RuntimeError, match="a bug"):
        run(list(range(200)), work, 4)
    assert len(started) < 200 and _other_threads() - before == set()
    done, failed = run(list(range(20)), lambda item: work(item + 100), 4)
    assert sorted([*done, *failed]) == list(range(20)) and all(isinstance(e, JangdokError) for e in failed.values())


# -- concurrency and threads ------------------------------------------------------------------------


def test_requests_in_flight_are_bounded_by_the_concurrency_setting(through_proxy: Cache) -> None:
    cache = through_proxy
    puts = _counting(cache.store.client, "PutObject")
    cache.put_many({f"{n}.pkl": n for n in range(16)})
    gets = _counting(cache.store.client, "GetObject")
    assert len(cache.get_many([f"{n}.pkl" for n in range(16)])) == 16
    for seen in (puts, gets):
        assert seen["total"] >= 16 and 2 <= seen["peak"] <= 4, seen


def test_no_thread_is_left_after_a_batch(cache: Cache) -> None:
    before = _other_threads()
    cache.put_many({f"{n}.pkl": n for n in range(40)})
    assert len(cache.get_many([f"{n}.pkl" for n in range(40)])) == 40
    assert _other_threads() - before == set()  # (threads of earlier tests may have ended meanwhile)


_FORK_AFTER_BATCHES = """
import os, sys, threading, warnings
from jangdok import Cache

cache = Cache(sys.argv[1], fallback=False)
cache.put_many({f"{n}.pkl": n for n in range(50)})
assert len(cache.get_many([f"{n}.pkl" for n in range(60)])) == 50

@cache.memoize(name="square")
def square(x):
    return x * x

assert list(square.map(range(70))) == [x * x for x in range(70)]
left = sorted(thread.name for thread in threading.enumerate() if thread is not threading.main_thread())
print("threads:", left, flush=True)
with warnings.catch_warnings(record=True) as seen:  # 3.12+: a fork with threads running warns
    warnings.simplefilter("always")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
os.waitpid(pid, 0)
print("fork warnings:", [str(warning.message) for warning in seen], flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_after_batches_copies_no_thread(tmp_path: Path) -> None:
    """In a fresh interpreter (pytest's workers run threads of their own)."""
    result = subprocess.run([sys.executable, "-c", _FORK_AFTER_BATCHES, str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["threads: []", "fork warnings: []"], result.stdout + result.stderr[-2000:]


# -- memoize: fn.map -------------------------------------------------------------------------------


def test_map_computes_only_the_misses_once_in_order(cache: Cache) -> None:
    computed: list[int] = []

    @cache.memoize
    def square(x: int) -> int:
        computed.append(x)
        return x * x

    assert square(2) == 4 and square(4) == 16
    computed.clear()
    before = cache.stats()[cache.store_label]
    assert list(square.map([1, 2, 3, 4, 3, 1])) == [1, 4, 9, 16, 9, 1]
    assert computed == [1, 3]  # the misses, once each, in order
    after = cache.stats()[cache.store_label]
    # Each call looked for once, in the batch: a miss is not counted again when computed.
    assert (after.hits - before.hits, after.misses - before.misses, after.computed - before.computed) == (2, 2, 2)
    computed.clear()
    assert list(square.map(range(5))) == [0, 1, 4, 9, 16] and computed == [0]


def test_map_takes_several_iterables_as_the_builtin_map(cache: Cache) -> None:
    @cache.memoize
    def add(a: int, b: int) -> int:
        return a + b

    assert list(add.map([1, 2, 3], [10, 20])) == [11, 22]
    assert add(3, 30) == 33 and list(add.map([3], [30])) == [33]
    with pytest.raises(TypeError):
        add.map()


def test_a_store_failure_in_maps_batch_is_said_and_those_calls_tried_again_alone(
        through_proxy: Cache, proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    cache = through_proxy
    computed: list[int] = []

    @cache.memoize
    def triple(x: int) -> int:
        computed.append(x)
        return 3 * x

    assert list(triple.map(range(8))) == [3 * x for x in range(8)]
    computed.clear()
    proxy.lose_answer_to(r"^GET \S+/" + re.escape(triple.key(5)) + " ")  # once: a blip
    assert list(triple.map(range(8))) == [3 * x for x in range(8)]
    assert computed == []  # the key the batch could not load was loaded alone, not computed
    assert "could not load 1 of 8 entries" in caplog.text and proxy.fired


_MAP_WORKER = """
import json, sys, time
from jangdok import Cache

log_path, order = sys.argv[1], sys.argv[2]
cache = Cache()

@cache.memoize(name="batches/slow_square")
def slow_square(x):
    with open(log_path, "a") as log:
        log.write(f"{x}\\n")
    time.sleep(0.2)
    return x * x

calls = range(8) if order == "up" else range(7, -1, -1)
print(json.dumps(list(slow_square.map(calls))))
"""


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_processes_mapping_overlapping_calls_compute_each_once(backend: str, request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    if backend == "s3":
        env = fleet_env(request.getfixturevalue("seaweed"), request.getfixturevalue("s3_url"))
    else:
        env = fleet_env(None, str(tmp_path / "cache"))
    log = tmp_path / "computed.log"
    workers = [subprocess.Popen([sys.executable, "-c", _MAP_WORKER, str(log), order], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for order in ("up", "down")]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outputs.append(json.loads(out))
    assert outputs == [[x * x for x in range(8)], [x * x for x in range(7, -1, -1)]]
    assert sorted(int(x) for x in log.read_text().split()) == list(range(8))  # each once, in total


# -- the local tier ---------------------------------------------------------------------------------


def test_a_batch_through_the_tier_revalidates_its_copies_together(
        seaweed: SeaweedServer, s3_url: str, proxy: FaultProxy, writer: Cache, tmp_path: Path) -> None:
    keys = [f"{n}.pkl" for n in range(12)]
    writer.put_many({key: _value(n) for n, key in enumerate(keys)})
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, local_dir=str(tmp_path / "tier"),
                           local_trust_seconds=0, concurrency=4)  # every read asks S3
    with Cache.from_settings(settings) as cache:
        assert len(cache.get_many(keys)) == 12  # copied into the tier
        assert isinstance(cache.store, TieredStore) and cache.store.remote is not None
        gets = _counting(cache.store.remote.client, "GetObject")
        proxy.requests.clear()
        proxy.statuses.clear()
        found = cache.get_many(keys)
        assert all(_same(found[key], n) for n, key in enumerate(keys))
        assert cache.stats()[LOCAL_TIER].hits == 24
        assert sorted(proxy.requests) == sorted(f"GET /{s3_url[5:]}{key}" for key in keys)
        assert proxy.statuses == [304] * 12  # one conditional GET each, no body
        assert 2 <= gets["peak"] <= 4, gets


def test_the_tier_stays_bounded_and_consistent_under_concurrent_batches(
        seaweed: SeaweedServer, s3_url: str, writer: Cache, tmp_path: Path) -> None:
    """Copies, evictions, validators and the usage count, from several threads at once (two
    batches over overlapping keys, eight loads in flight each), while the tier overflows."""
    keys = [f"{n}.pkl" for n in range(30)]
    writer.put_many({key: np.random.default_rng(n).bytes(40_000) for n, key in enumerate(keys)})
    tier = tmp_path / "tier"
    settings = s3_settings(seaweed, s3_url, local_dir=str(tier), local_max_bytes=400_000,
                           local_max_entry_bytes=100_000, local_trust_seconds=60, concurrency=8)
    with Cache.from_settings(settings) as cache:
        found: list[dict[str, Any]] = []
        batches = [threading.Thread(target=lambda part=part: found.append(cache.get_many(part)))
                   for part in (keys[:20], keys[10:])]
        for batch in batches:
            batch.start()
        for batch in batches:
            batch.join()
        for answer in [*found, cache.get_many(keys)]:
            assert all(value == np.random.default_rng(int(key[:-4])).bytes(40_000) for key, value in answer.items())
        assert len(found) == 2 and sorted({key for answer in found for key in answer}) == sorted(keys)
    copies = {path.name: path.stat().st_size for path in tier.rglob("*.pkl")
              if path.is_file() and ".jangdok" not in path.parts}
    assert 0 < sum(copies.values()) <= 400_000
    [usage] = tier.rglob(".jangdok/usage")
    assert int(usage.read_text()) >= sum(copies.values())  # the count may be high, never low
    local_tier = cache.store.local_tier()
    assert local_tier is not None
    held = [key for key in keys if local_tier.holds(key)]
    assert held and set(held) <= set(copies)


# -- main.py ----------------------------------------------------------------------------------------


CHAPTER_LABELS = ["안녕하세요", "감사합니다"]


def test_mains_batch_load_gives_the_values_it_computed(cache: Cache, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """main.py's load: the labels' entries fetched together, the misses computed and saved
    (each looked for once); then, warm, the same values from the batch alone."""
    monkeypatch.setattr(chapter_main, "QUIET", False)  # another test's main(-q) may have set it
    # The sequences as the real extraction would give them (tested elsewhere), in a blink.
    monkeypatch.setattr(chapter_main, "process_label",
                        lambda videos, params, rng: [rng.standard_normal((30, 8)) for _ in range(40)])
    params = chapter_main.params_from_config()
    videos = {}
    for number, label in enumerate(CHAPTER_LABELS):
        video = tmp_path / "data" / f"{number}.npz"
        video.parent.mkdir(exist_ok=True)
        video.write_bytes(b"landmarks")
        videos[label] = [video]
    keys = [cache_file_name(label, params) for label in CHAPTER_LABELS]

    def load(tally: chapter_main.RunTally) -> list[list[np.ndarray]]:
        found, looked = chapter_main.load_all(cache, keys, tally)
        return [chapter_main.load_or_build(label, videos[label], params, tmp_path / "data", cache, tally,
                                           key in looked, found.pop(key, None))
                for label, key in zip(CHAPTER_LABELS, keys, strict=True)]

    cold_tally, warm_tally = chapter_main.RunTally(), chapter_main.RunTally()
    cold = load(cold_tally)
    assert cold_tally.seconds_computing > 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("💾")] == CHAPTER_LABELS
    warm = load(warm_tally)
    assert warm_tally.seconds_computing == 0
    loaded = [line for line in capsys.readouterr().out.splitlines() if line.startswith("📂")]
    assert [line.split()[1] for line in loaded] == CHAPTER_LABELS
    for computed, reloaded in zip(cold, warm, strict=True):
        assert len(computed) == len(reloaded) == 40
        assert all(np.array_equal(a, b) for a, b in zip(computed, reloaded, strict=True))
    stats = cache.stats()[cache.store_label]
    assert (stats.misses, stats.hits, stats.computed) == (2, 2, 2)  # one look per label and run
