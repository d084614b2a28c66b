"""Shared across machines: the local tier in front of S3, and computing each entry once.

Machines are played by processes with their own local tiers; S3 is a real SeaweedFS, reached
through a counting proxy where the number of requests is the point.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy
from fleet import fleet_env, member, results, start, wait_for
from helpers import s3_settings
from seaweed import SeaweedServer, credentials_env

from jangdok import Cache, ConfigError, Settings, WaitTimeout
from jangdok.stores import LOCAL_TIER, TieredStore

VALUE = {"arrays": [np.arange(50_000, dtype=np.float32) * i for i in range(3)], "label": "김치"}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["label"] == b["label"] and all(np.array_equal(x, y) for x, y in zip(a["arrays"], b["arrays"], strict=True))


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and ".jangdok" not in path.parts)


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    running = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    yield running
    running.close()


@pytest.fixture
def tiered(seaweed: SeaweedServer, proxy: FaultProxy, s3_url: str, tmp_path: Path) -> Iterator[Cache]:
    """A cache with a local tier whose S3 requests all pass through ``proxy``."""
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, local_dir=str(tmp_path / "tier"),
                           local_trust_seconds=60, max_attempts=1)
    with Cache.from_settings(settings) as cache:
        cache.store  # noqa: B018 - opened (and its capabilities probed) before the test counts
        cache.store.capabilities  # noqa: B018
        yield cache


@pytest.fixture
def writer(seaweed: SeaweedServer, s3_url: str) -> Iterator[Cache]:
    """Another machine: writes straight to S3, with no local tier."""
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        yield cache


def _tiered_with(seaweed: SeaweedServer, s3_url: str, tmp_path: Path, **settings: Any) -> Cache:
    return Cache.from_settings(s3_settings(seaweed, s3_url, local_dir=str(tmp_path / "tier"), **settings))


# -- the local tier -------------------------------------------------------------------------


def test_a_read_is_kept_locally_and_the_next_read_makes_no_request(tiered: Cache, writer: Cache,
                                                                   proxy: FaultProxy) -> None:
    writer.put("labels/hello.pkl", VALUE)
    proxy.requests.clear()
    assert _same(tiered.get("labels/hello.pkl"), VALUE)
    assert [line.split()[0] for line in proxy.requests] == ["GET"]
    proxy.requests.clear()
    found = tiered.get_entry("labels/hello.pkl")
    assert found is not None and _same(found.value, VALUE)
    assert proxy.requests == []  # within the trust window: served locally, nothing asked
    assert found.info.store == LOCAL_TIER
    stats = tiered.stats()
    assert stats[LOCAL_TIER].hits == 2 and stats[LOCAL_TIER].bytes_read > 0
    assert "S3" not in stats or stats["S3"].hits == 0


def test_after_the_trust_window_a_read_revalidates_without_a_body(seaweed: SeaweedServer, proxy: FaultProxy,
                                                                  writer: Cache, s3_url: str, tmp_path: Path) -> None:
    writer.put("x.pkl", VALUE)
    cache = _tiered_with(seaweed, s3_url, tmp_path, endpoint_url=proxy.endpoint, local_trust_seconds=0)
    assert _same(cache.get("x.pkl"), VALUE)
    proxy.requests.clear()
    proxy.statuses.clear()
    assert _same(cache.get("x.pkl"), VALUE)
    assert len(proxy.requests) == 1 and proxy.requests[0].startswith("GET")
    assert proxy.statuses == [304]
    assert cache.stats()[LOCAL_TIER].hits == 2


def test_with_s3_unreachable_the_local_copy_is_served_and_the_log_says_so(
        seaweed: SeaweedServer, proxy: FaultProxy, writer: Cache, s3_url: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    writer.put("x.pkl", VALUE)
    cache = _tiered_with(seaweed, s3_url, tmp_path, endpoint_url=proxy.endpoint, local_trust_seconds=0,
                         max_attempts=1, connect_timeout=1, read_timeout=1, total_timeout=4)
    assert _same(cache.get("x.pkl"), VALUE)
    proxy.close()  # the endpoint now refuses connections
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert _same(cache.get("x.pkl"), VALUE)
    assert caplog.text.count("is unreachable") == 1 and "serving the copies in the local tier" in caplog.text
    assert cache.stats()[LOCAL_TIER].hits == 2


def test_writes_go_to_both_tiers_and_large_entries_stay_remote(seaweed: SeaweedServer, proxy: FaultProxy,
                                                               s3_url: str, tmp_path: Path) -> None:
    cache = _tiered_with(seaweed, s3_url, tmp_path, endpoint_url=proxy.endpoint, local_trust_seconds=60,
                         local_max_entry_bytes=100_000)
    cache.put("small.pkl", "tiny")
    cache.put("large.pkl", np.zeros(200_000, dtype=np.uint8))
    tier = tmp_path / "tier"
    assert [path.name for path in tier.rglob("*.pkl") if ".jangdok" not in path.parts] == ["small.pkl"]
    proxy.requests.clear()
    assert cache.get("small.pkl") == "tiny"
    assert proxy.requests == []
    assert cache.get("large.pkl").nbytes == 200_000
    assert len(proxy.requests) == 1  # read from S3, every time
    assert cache.get_entry("large.pkl").info.store == "S3"


def test_the_tier_evicts_the_least_recently_used_copies(seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    cache = _tiered_with(seaweed, s3_url, tmp_path, local_max_bytes=250_000,
                         local_max_entry_bytes=200_000, local_trust_seconds=60)
    block = np.zeros(100_000, dtype=np.uint8)
    cache.put("a.pkl", block)
    time.sleep(0.05)
    cache.put("b.pkl", block)
    time.sleep(0.05)
    cache.get("a.pkl")  # a is now more recently used than b
    time.sleep(0.05)
    cache.put("c.pkl", block)
    tier = tmp_path / "tier"
    kept = sorted(path.name for path in tier.rglob("*.pkl") if ".jangdok" not in path.parts)
    assert kept == ["a.pkl", "c.pkl"]
    assert _folder_bytes(tier) <= 250_000
    assert cache.get("b.pkl").nbytes == 100_000  # evicted locally, still on S3


def test_the_tier_bound_holds_with_concurrent_writers(seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    env = {**os.environ, **credentials_env(seaweed), "CACHE_DIR": s3_url, "CACHE_LOCAL_DIR": str(tmp_path / "tier"),
           "CACHE_LOCAL_MAX_BYTES": "400000",
           "CACHE_LOCAL_MAX_ENTRY_BYTES": "100KB", "JANGDOK_FALLBACK": "0"}
    script = ("import sys, numpy as np\nfrom jangdok import Cache\nc = Cache()\n"
              "for i in range(12):\n    c.put(f'w{sys.argv[1]}/{i}.pkl', np.full(50_000, i, dtype=np.uint8))\n")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env) for n in range(4)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0, 0, 0]
    assert 0 < _folder_bytes(tmp_path / "tier") <= 400_000


def test_a_damaged_local_copy_is_replaced_from_s3_which_keeps_its_entry(
        seaweed: SeaweedServer, writer: Cache, s3_url: str, tmp_path: Path) -> None:
    writer.put("x.pkl", VALUE)
    cache = _tiered_with(seaweed, s3_url, tmp_path, local_trust_seconds=60)
    assert _same(cache.get("x.pkl"), VALUE)
    [copy] = [path for path in (tmp_path / "tier").rglob("x.pkl") if ".jangdok" not in path.parts]
    before = copy.stat()
    with open(copy, "r+b") as file:  # damaged in place (a failing disk), same inode, size and time,
        file.seek(before.st_size - 100)  # so its validator still vouches for it
        file.write(b"\xff" * 8)
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _same(cache.get("x.pkl"), VALUE)  # the copy was dropped, and S3 read again
    assert cache.stats()[LOCAL_TIER].corrupt_deleted == 1
    assert _same(writer.get("x.pkl"), VALUE)  # the remote entry was never deleted
    assert _same(cache.get("x.pkl"), VALUE)


def test_a_tier_store_is_the_composition_and_fallback_is_the_same_one(seaweed: SeaweedServer, s3_url: str,
                                                                      tmp_path: Path) -> None:
    cache = _tiered_with(seaweed, s3_url, tmp_path)
    assert isinstance(cache.store, TieredStore) and cache.store.remote is not None
    offline = Cache.from_settings(Settings(cache_dir=s3_url, fallback_dir=str(tmp_path / "fallback")))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        assert isinstance(offline.store, TieredStore) and offline.store.remote is None
    assert offline.fallback_reason and offline.store_label == "local (fallback)"


# -- compute once -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_three_processes_missing_one_key_compute_it_once(backend: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    log = tmp_path / "computed.log"
    workers = []
    for machine in range(3):
        if backend == "s3":
            seaweed = request.getfixturevalue("seaweed")
            env = fleet_env(seaweed, request.getfixturevalue("s3_url"),
                             CACHE_LOCAL_DIR=str(tmp_path / f"machine{machine}"))
        else:
            env = fleet_env(None, str(tmp_path / "cache"))
        workers.append(start(env, "labels/hello.pkl", log, 1.0))
    found = results(workers)
    assert len(log.read_text().split()) == 1
    assert len({json.dumps(result["value"]) for result in found}) == 1
    assert sum(tier["computed"] for result in found for tier in result["stats"].values()) == 1


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_lease_owner_killed_with_sigkill_is_taken_over(backend: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    if backend == "s3":
        env = fleet_env(request.getfixturevalue("seaweed"), request.getfixturevalue("s3_url"),
                         JANGDOK_LEASE_SECONDS="1.5")
    else:
        env = fleet_env(None, str(tmp_path / "cache"))
    log = tmp_path / "computed.log"
    owner = start(env, "k.pkl", log, 0, "hang")
    wait_for(log)
    waiter = start(env, "k.pkl", log, 0)
    time.sleep(0.5)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    [result] = results([waiter])
    assert result["value"]["by"] == waiter.pid
    assert len(log.read_text().split()) == 2  # the dead owner's try, and the waiter's
    if backend == "s3":
        assert result["stats"]["S3"]["lease_takeovers"] == 1


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_waiting_is_bounded_and_the_error_names_the_key_and_the_owner(backend: str, request: pytest.FixtureRequest,
                                                                      tmp_path: Path) -> None:
    env, cache = member(backend, request, tmp_path)
    log = tmp_path / "computed.log"
    owner = start(env, "slow/one.pkl", log, 0, "hang")
    try:
        wait_for(log)
        with pytest.raises(WaitTimeout) as raised:
            cache.get_or_compute("slow/one.pkl", lambda: "never", timeout=0.5)
        message = str(raised.value)
        assert "slow/one.pkl" in message and f":{owner.pid}:" in message
    finally:
        owner.kill()
        owner.wait()


def test_a_failed_computation_releases_the_lease_and_a_waiter_computes(cache: Cache) -> None:
    started = threading.Event()
    results: list[Any] = []

    def failing() -> str:
        started.set()
        time.sleep(0.3)
        raise RuntimeError("the model crashed")

    def first() -> None:
        with pytest.raises(RuntimeError, match="model crashed"):
            cache.get_or_compute("k.pkl", failing)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(10)
    results.append(cache.get_or_compute("k.pkl", lambda: "second try"))
    thread.join()
    assert results == ["second try"] and cache.get("k.pkl") == "second try"
    assert cache.stats()[cache.store_label].computed == 1


def test_threads_of_one_process_compute_once(cache: Cache) -> None:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.3)
        return 42

    threads = [threading.Thread(target=lambda: calls.append(cache.get_or_compute("t.pkl", compute) * 0))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls.count(1) == 1 and calls.count(0) == 4


def test_a_failed_save_is_a_warning_and_the_value_is_returned(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sub").write_text("a file where the entry's folder should be")
    cache = Cache(str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get_or_compute("sub/k.pkl", lambda: "value") == "value"
    assert "could not save it" in caplog.text


def test_a_server_ignoring_conditional_writes_is_detected_once(moto: SeaweedServer, s3_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # moto checks no signatures: with the conditions removed on the way, it never sees them, as a
    # server without them would not.
    proxy = FaultProxy(int(moto.endpoint.rsplit(":", 1)[1]))
    proxy.drop_headers("PUT", "If-None-Match", "If-Match")
    cache = Cache.from_settings(s3_settings(moto, s3_url, endpoint_url=proxy.endpoint))
    try:
        with caplog.at_level(logging.WARNING, logger="jangdok"):
            assert cache.get_or_compute("k.pkl", lambda: "value") == "value"
            assert cache.get_or_compute("k2.pkl", lambda: "other") == "other"
        assert caplog.text.count("ignores If-None-Match and If-Match on PutObject") == 1
        assert cache.get("k.pkl") == "value"
        assert sorted(cache.keys()) == ["k.pkl", "k2.pkl"]  # leases are not entries
    finally:
        cache.close()
        proxy.close()


def test_prune_deletes_in_batches_pinned_to_the_listed_versions(seaweed: SeaweedServer, proxy: FaultProxy,
                                                                s3_url: str) -> None:
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint))
    for number in range(30):
        cache.put(f"old/{number}.pkl", number)
    proxy.requests.clear()
    report = cache.prune(older_than=0)
    assert len(report.removed) == 30 and list(cache.keys()) == []
    batches = [line for line in proxy.requests if line.startswith("POST") and "delete" in line]
    assert len(batches) == 2, proxy.requests  # the one-off probe, then one DeleteObjects for all 30
    assert not [line for line in proxy.requests if line.startswith("DELETE") and "/old/" in line]


def test_a_dead_owners_lease_is_a_leftover_that_cleanup_removes(request: pytest.FixtureRequest,
                                                                 backend: str, tmp_path: Path) -> None:
    env, cache = member(backend, request, tmp_path, lease_seconds=0.5)
    log = tmp_path / "computed.log"
    owner = start({**env, "JANGDOK_LEASE_SECONDS": "0.5"}, "k.pkl", log, 0, "hang")
    wait_for(log)
    assert cache.cleanup(older_than=3600) == 0  # young: it may be alive
    if backend == "s3":  # however short older_than, a live lease is renewed: never ten lifetimes old
        time.sleep(1)
        assert cache.cleanup(0) == 0
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30  # ten lifetimes on the server's clock, which counts whole seconds
    while (removed := cache.cleanup(older_than=1)) == 0:
        assert time.monotonic() < deadline, "the dead owner's lease was never removed"
        time.sleep(0.5)
    assert removed == 1
    assert cache.get_or_compute("k.pkl", lambda: "fresh") == "fresh"  # no lease left to wait for


def test_lock_files_come_and_go_under_many_processes_without_errors(tmp_path: Path) -> None:
    """Lock files and their folders are removed on release while other processes create
    them: neither side may fail, and each key is still computed once."""
    log = tmp_path / "computed.log"
    script = ("import os, sys\nfrom jangdok import Cache\nc = Cache(sys.argv[1])\n"
              "def compute(key):\n    with open(sys.argv[2], 'a') as log:\n        log.write(key + '\\n')\n"
              "    return key\n"
              "for i in range(200):\n    key = f'deep/er/{i % 20}.pkl' if i < 40 else f'{i}.pkl'\n"
              "    assert c.get_or_compute(key, lambda: compute(key)) == key\n")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), str(log)],
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read() if worker.stderr else ""
    computed = log.read_text().split()
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 180
    assert not (tmp_path / "cache" / ".jangdok").exists()  # no lock file or folder left behind


def test_an_entry_accept_refuses_is_recomputed_and_replaced(cache: Cache) -> None:
    cache.put("k.pkl", "from old inputs", metadata={"inputs": 1})

    def current(info: Any) -> bool:
        return info.metadata == {"inputs": 2}

    assert cache.get_or_compute("k.pkl", lambda: "fresh", metadata={"inputs": 2}, accept=current) == "fresh"
    assert cache.get_entry("k.pkl").info.metadata == {"inputs": 2}
    calls: list[int] = []
    assert cache.get_or_compute("k.pkl", lambda: calls.append(1), accept=current) == "fresh"
    assert calls == []


def test_a_computation_nobody_else_held_counts_no_waiting(cache: Cache) -> None:
    cache.get_or_compute("alone.pkl", lambda: 1)
    stats = cache.stats()[cache.store_label]
    assert stats.computed == 1 and stats.seconds_waiting == 0.0


def test_damage_on_s3_is_deleted_there_even_through_a_local_tier(seaweed: SeaweedServer, writer: Cache,
                                                                 s3_url: str, tmp_path: Path) -> None:
    writer.put("x.pkl", VALUE)
    reader = writer.store.read("x.pkl")
    with reader:
        data = bytearray(reader.read())
    data[-100] ^= 0xFF
    writer.store.write("x.pkl", bytes(data))  # damaged in storage, not in transit
    cache = _tiered_with(seaweed, s3_url, tmp_path, local_trust_seconds=60)
    assert cache.get("x.pkl") is None
    assert not writer.exists("x.pkl")  # the damaged S3 object itself was removed
    assert cache.get("x.pkl") is None and not writer.exists("x.pkl")


def test_a_tier_that_cannot_be_written_still_serves_reads_from_s3(seaweed: SeaweedServer, writer: Cache,
                                                                  s3_url: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    writer.put("x.pkl", VALUE)
    blocked = tmp_path / "tier"
    blocked.write_text("a file where the tier's folder should be")
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, local_dir=str(blocked)))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert _same(cache.get("x.pkl"), VALUE)
    assert "could not keep a local copy" in caplog.text


def test_read_only_credentials_compute_without_a_lease_and_misjudge_nothing(
        seaweed: SeaweedServer, s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from seaweed import READ_ONLY

    cache = Cache.from_settings(s3_settings(seaweed, s3_url, identity=READ_ONLY))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get_or_compute("k.pkl", lambda: "value") == "value"
    assert "cannot take a compute lease" in caplog.text and "could not save it" in caplog.text
    assert "ignores" not in caplog.text  # the probes could not run: nothing is claimed about the server


def test_read_only_credentials_behind_an_unreadable_lease_compute_at_once(
        seaweed: SeaweedServer, s3_url: str, s3_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Taking over a lease nobody can read needs a write these credentials may not make: that
    is a lease this process cannot take (computed at once), not a race lost to another."""
    from helpers import BUCKET
    from seaweed import READ_ONLY

    seaweed.client().put_object(Bucket=BUCKET, Key=f"{s3_prefix}.jangdok/leases/k.pkl", Body=b"{cut sh")
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, identity=READ_ONLY, lease_seconds=30))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get_or_compute("k.pkl", lambda: "value", timeout=20) == "value"
    assert time.monotonic() - started < 10
    assert "cannot take a compute lease" in caplog.text


def test_a_lease_put_cut_short_does_not_hold_up_its_key(seaweed: SeaweedServer, proxy: FaultProxy,
                                                          s3_url: str, s3_prefix: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The connection of the PUT creating the lease is cut after the server's 100 Continue.
    SeaweedFS then stores an unreadable lease, and the retry is refused by it (412). Nobody can
    be renewing a lease nobody can read: it is taken over at once, not after a lifetime."""
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, lease_seconds=30))
    cache.store.capabilities  # noqa: B018 - probed before the fault is armed
    proxy.lose_answer_to(rf"^PUT /jangdok-test/{s3_prefix}\.jangdok/leases/k\.pkl")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get_or_compute("k.pkl", lambda: "value") == "value"
    assert time.monotonic() - started < 10
    assert "not renewed" not in caplog.text
    assert cache.stats()["S3"].computed == 1 and list(cache.keys()) == ["k.pkl"]


def test_a_lease_write_that_landed_but_lost_its_answer_is_ours(seaweed: SeaweedServer, proxy: FaultProxy,
                                                                s3_url: str, s3_prefix: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The creating PUT lands whole (its body sent after the server's 100 Continue), its answer
    is lost, and the retry meets the lease it made itself (412)."""
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, lease_seconds=30))
    proxy.lose_answer_to(rf"^PUT /jangdok-test/{s3_prefix}\.jangdok/leases/k\.pkl", after_continue=True)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="jangdok"):
        assert cache.get_or_compute("k.pkl", lambda: "value") == "value"
    lease_line = f"PUT /jangdok-test/{s3_prefix}.jangdok/leases/k.pkl"
    assert proxy.fired == [f"lost answer: {lease_line}"]
    assert proxy.requests.count(lease_line) == 2, "the write, then its retry refused by the lease it made"
    assert time.monotonic() - started < 10
    assert "taken over" not in caplog.text and cache.stats()["S3"].computed == 1


@pytest.mark.parametrize("lifetime", [1e300, 7200, float("inf"), -1, "forever"])
def test_a_planted_lease_with_a_lifetime_no_jangdok_writes_holds_up_nothing(seaweed: SeaweedServer, s3_url: str,
                                                                            lifetime: Any) -> None:
    """Anyone who can write the bucket can plant a lease; one recording a lifetime longer than
    any jangdok writes (or none at all) is not a lease: taken over at once, still conditionally."""
    cache = Cache.from_settings(s3_settings(seaweed, s3_url))
    planted = json.dumps({"owner": "nobody", "lease_seconds": lifetime}).encode()
    cache.store.write(".jangdok/leases/report.pkl", planted)
    started = time.monotonic()
    assert cache.get_or_compute("report.pkl", lambda: "computed", timeout=60) == "computed"
    assert time.monotonic() - started < 30, "no wait for the planted lease's lifetime"
    assert cache.cleanup(0) == 0 and not list(cache.store.list(".jangdok/leases/")), "released, not left behind"


def test_a_lease_longer_than_an_hour_is_refused_where_it_is_set() -> None:
    with pytest.raises(ConfigError, match=r"lease_seconds .* must be a finite number of seconds >= 0.1 and <= 3600"):
        Settings(cache_dir="cache", lease_seconds=7200)
