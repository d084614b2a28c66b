"""Large entries on S3 travel in parallel: ranged GETs in, multipart parts out.

Through a fault proxy in front of a shaped link (40 MB/s a connection, slower than the
:data:`~jangdok.stores.s3.reader.ONE_CONNECTION_SUFFICES` that reads a fast link in order) in front
of SeaweedFS (and moto where the server matters): a load is one
GET for an entry that fits in a part and parallel ranges for the rest, bounded by the
``concurrency`` setting; a range cut mid-body is resumed alone; an object replaced mid-load
gives the old value, the new one or a miss, never a mix; a failed part aborts the upload;
progress is reported in the caller's thread; no thread outlives a call, so a fork or a spawn
afterwards reads the right values.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy
from helpers import BUCKET, s3_settings

from jangdok import Cache, StoreUnavailable, parse_location
from jangdok.bench.link import Link
from jangdok.settings import MIN_PART_SIZE
from jangdok.stores.s3 import S3Store

OLD = np.arange(3_000_000, dtype=np.float64)  # 24 MB: the first part, then four ranges of 5 MiB
NEW = OLD[::-1].copy()
SLOW = 40e6  # bytes per second, per connection
PARTS = 5  # requests for the whole of OLD's entry (24,000,448 bytes) in parts of 5 MiB


def _cache(server: Any, url: str, endpoint: str | None = None, **overrides: Any) -> Cache:
    settings = s3_settings(server, url, part_size=MIN_PART_SIZE, **overrides,
                           **({"endpoint_url": endpoint} if endpoint else {}))
    cache = Cache.from_settings(settings)
    cache._store = S3Store(parse_location(url), settings)  # no opening listing: the proxy sees the loads only
    cache._store_label = "S3"
    return cache


def _slow(endpoint: str) -> Link:
    return Link(endpoint, rtt=0.002, per_connection=SLOW, total=None)


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[FaultProxy]:
    """The fault proxy in front of a link slow enough for ranges to pay."""
    with _slow(seaweed.endpoint) as link:
        faulty = FaultProxy(link.port)
        yield faulty
        faulty.close()


def _transfer_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate()
            if thread.name.startswith(("jangdok-range", "jangdok-part"))]


@pytest.fixture
def stored(seaweed: Any, s3_url: str) -> Iterator[Cache]:
    with _cache(seaweed, s3_url) as direct:
        direct.put("big.pkl", OLD)
        direct.put("small.pkl", {"small": True})
        yield direct


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_a_large_load_is_parallel_ranges_bounded_by_the_concurrency_setting(
        server_name: str, request: pytest.FixtureRequest, s3_url: str) -> None:
    server = request.getfixturevalue(server_name)
    link = _slow(server.endpoint)
    proxy = FaultProxy(link.port)
    try:
        with _cache(server, s3_url) as direct:
            direct.put("big.pkl", OLD)
            direct.put("small.pkl", {"small": True})
        with _cache(server, s3_url, proxy.endpoint, concurrency=3) as cache:
            assert cache.get("small.pkl") == {"small": True}
            assert [line.split()[0] for line in proxy.requests] == ["GET"], "a small entry is one request"
            assert np.array_equal(cache.get("big.pkl"), OLD)
            gets = [line for line in proxy.requests[1:] if line.startswith("GET")]
            assert len(gets) == PARTS, "the first part, then one ranged GET per further part"
            assert len(proxy.ranges) == 1 + PARTS and all(r.startswith("bytes=") for r in proxy.ranges)
            # A connection is opened only when none is free: three in flight at most, ever.
            assert proxy.most_open <= 3
            assert _transfer_threads() == [], "the range threads are joined before the load returns"
    finally:
        proxy.close()
        link.close()


def test_bodies_read_whole_give_their_connection_back(stored: Cache, seaweed: Any, s3_url: str,
                                                      proxy: FaultProxy) -> None:
    """Bodies go from the socket straight into the payload's buffer, not through urllib3's copy;
    one read to its end gives its connection back to the pool as urllib3 would, so loads one
    after another share one connection (on a real link each new one costs round trips)."""
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=1) as cache:
        for _ in range(2):
            assert cache.get("small.pkl") == {"small": True}
            assert np.array_equal(cache.get("big.pkl"), OLD)  # the first part, then the rest in order
    assert len(proxy.ranges) == 6 and proxy.connections == 1


def test_a_connection_reset_mid_body_is_resumed_alone(stored: Cache, seaweed: Any, s3_url: str,
                                                       proxy: FaultProxy) -> None:
    """Read from the socket directly, a body whose connection is reset (an RST: the read fails,
    rather than ending early) is a broken transfer like a cut one: that range resumed alone."""
    proxy.faults.extend([("pass",), ("reset", 1_000_000)])  # the second connection: one of the ranges
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        assert np.array_equal(cache.get("big.pkl"), OLD)
    assert proxy.fired == ["reset 1000000"]
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in proxy.ranges)
    boundaries = {index * MIN_PART_SIZE for index in range(PARTS + 1)}
    resumed = [start for start in starts if start not in boundaries]
    assert len(starts) == PARTS + 1 and len(resumed) == 1, "every range once, and the reset one's rest"


def test_a_range_cut_mid_body_is_resumed_alone(stored: Cache, seaweed: Any, s3_url: str, proxy: FaultProxy) -> None:
    proxy.faults.extend([("pass",), ("cut", 1_000_000)])  # the second connection: one of the ranges
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        assert np.array_equal(cache.get("big.pkl"), OLD)
    assert proxy.fired == ["cut 1000000"]
    assert len(proxy.ranges) == PARTS + 1, "every range once, and the cut one's rest"
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in proxy.ranges)
    boundaries = {index * MIN_PART_SIZE for index in range(PARTS + 1)}
    resumed = [start for start in starts if start not in boundaries]
    assert len(resumed) == 1 and (resumed[0] - 1_000_000) in boundaries, "resumed where the cut left it"


@pytest.mark.parametrize("cut_at", [100_000, 3_000_000])
def test_an_entry_replaced_mid_load_is_never_a_mix(stored: Cache, seaweed: Any, s3_url: str, proxy: FaultProxy,
                                                    cut_at: int) -> None:
    proxy.faults.extend([("pass",), ("cut", cut_at, lambda: stored.put("big.pkl", NEW))])
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        loaded = cache.get("big.pkl")
        stats = cache.stats()["S3"]
    assert proxy.fired == [f"cut {cut_at}"]
    assert loaded is None or np.array_equal(loaded, OLD) or np.array_equal(loaded, NEW)
    assert np.array_equal(stored.get("big.pkl"), NEW), "nothing was deleted"
    assert stats.corrupt_deleted == 0


def test_a_ranged_load_refuses_a_replaced_object_at_the_store(stored: Cache, seaweed: Any, s3_url: str,
                                                              proxy: FaultProxy) -> None:
    proxy.faults.extend([("pass",), ("cut", 500_000, lambda: stored.put("big.pkl", NEW))])
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        target = memoryview(bytearray(OLD.nbytes + MIN_PART_SIZE))
        with pytest.raises(StoreUnavailable, match="replaced while it was being read"):
            with cache.store.read("big.pkl") as reader:
                assert reader.fill is not None
                reader.fill(target)
    assert _transfer_threads() == []


def test_a_failing_part_aborts_the_whole_upload(seaweed: Any, s3_url: str, s3_prefix: str,
                                                proxy: FaultProxy) -> None:
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=2, max_attempts=1) as cache:
        cache.get("nothing.pkl")  # opens the first connection, so the faults meet the part uploads
        proxy.faults.extend([("status", 500, "InternalError")] * 8)
        with pytest.raises(StoreUnavailable, match="InternalError"):
            cache.put("big.pkl", OLD)
        assert cache.get("big.pkl") is None
    assert _transfer_threads() == []
    uploads = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=s3_prefix).get("Uploads", [])
    assert uploads == [], "the failed upload was aborted"


def test_parallel_progress_rises_in_the_calling_thread(seaweed: Any, s3_url: str, proxy: FaultProxy) -> None:
    calls: list[tuple[int, int, str]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total, threading.current_thread().name))

    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        cache.put("big.pkl", OLD, progress=progress)
        saved, calls[:] = list(calls), []
        assert np.array_equal(cache.get("big.pkl", progress=progress), OLD)
        loaded = calls
    assert len(proxy.ranges) > 1, "the load went in ranges"
    for series in (saved, loaded):
        done = [call[0] for call in series]
        assert done == sorted(done) and done[-1] == series[-1][1], "rising to the total"
        assert {call[2] for call in series} == {threading.current_thread().name}


def _load_in_child(url: str, endpoint: str, identity: tuple[str, str], queue: Any) -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": identity[0], "AWS_SECRET_ACCESS_KEY": identity[1]})
    with Cache(url, endpoint_url=endpoint, part_size=MIN_PART_SIZE, concurrency=4) as cache:
        queue.put((float(cache.get("big.pkl").sum()), cache.get("small.pkl")))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_children_after_parallel_loads_read_the_right_values(stored: Cache, seaweed: Any, s3_url: str,
                                                             method: str, proxy: FaultProxy) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        assert np.array_equal(cache.get("big.pkl"), OLD)  # the parallel path, in this process
        assert len(proxy.ranges) > 1
        assert _transfer_threads() == [], "nothing of the load is left running to be forked"
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        children = [context.Process(target=_load_in_child, args=(s3_url, proxy.endpoint, seaweed.identity, queue))
                    for _ in range(2)]
        for child in children:
            child.start()
        results = [queue.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
            assert child.exitcode == 0
        assert np.array_equal(cache.get("big.pkl"), OLD), "the parent's connections still answer it alone"
    assert results == [(float(OLD.sum()), {"small": True})] * 2


def test_a_batch_of_large_entries_shares_one_budget_of_helpers(stored: Cache, seaweed: Any, s3_url: str,
                                                               proxy: FaultProxy) -> None:
    for number in range(3):
        stored.put(f"big{number}.pkl", OLD)
    keys = ["big.pkl", "big0.pkl", "big1.pkl", "big2.pkl"]
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=3) as cache:
        found = cache.get_many(keys)
    assert sorted(found) == sorted(keys) and all(np.array_equal(value, OLD) for value in found.values())
    # Three loads at a time, and at most three helpers between them: not three helpers each.
    assert proxy.most_open <= 6
    assert _transfer_threads() == []


def test_each_range_is_retried_on_its_own_budget(stored: Cache, seaweed: Any, s3_url: str,
                                                 proxy: FaultProxy) -> None:
    # One connection per range (each cut right after its body), then a 503 for the third range:
    # retried as any lone request is, however many ranges went before it.
    proxy.faults.extend([("cut", MIN_PART_SIZE)] * 3 + [("status", 503, "SlowDown")])
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=1, max_attempts=3) as cache:
        with cache.store.read("big.pkl") as reader:
            whole = memoryview(bytearray(reader.size))
            first = 0
            while first < MIN_PART_SIZE:  # the first response, read up: the ranges do the rest
                first += reader.readinto(whole[first:MIN_PART_SIZE])
            assert reader.fill is not None
            assert reader.fill(whole[first:]) == reader.size - first
    assert "status 503 SlowDown" in proxy.fired
    assert bytes(whole) == seaweed.client().get_object(Bucket=BUCKET, Key=cache.store.location.object_key(
        "big.pkl"))["Body"].read()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, ValueError])
def test_a_callback_raising_mid_load_joins_every_range_and_gives_back_the_helpers(
        stored: Cache, seaweed: Any, s3_url: str, interrupt: type[BaseException]) -> None:
    def progress(done: int, total: int) -> None:
        if done > MIN_PART_SIZE:  # Ctrl-C, or a bug, in the calling thread while ranges arrive
            raise interrupt("stop")

    with _cache(seaweed, s3_url, concurrency=4) as cache:
        with pytest.raises(interrupt):
            cache.get("big.pkl", progress=progress)
        assert _transfer_threads() == []
        helpers = cache.store.helpers
        assert helpers.take(4) == 4, "every helper given back"
        helpers.give(4)
        assert np.array_equal(cache.get("big.pkl"), OLD)


def test_a_stream_of_chunks_that_fails_midway_aborts_its_upload(seaweed: Any, s3_url: str, s3_prefix: str) -> None:
    def chunks() -> Iterator[memoryview]:
        for _ in range(3):  # parts on their way up when the stream breaks
            yield memoryview(bytes(MIN_PART_SIZE))
        raise ValueError("the source broke")

    with _cache(seaweed, s3_url, concurrency=2) as cache:
        with pytest.raises(ValueError, match="the source broke"):
            cache.store.write("streamed", chunks())
        assert cache.store.stat("streamed") is None
        assert _transfer_threads() == []
        assert cache.store.helpers.take(2) == 2, "every helper given back"
    uploads = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=s3_prefix).get("Uploads", [])
    assert uploads == [], "the upload was aborted"


@pytest.mark.parametrize("header", ["Content-Range", "Last-Modified"])
def test_an_answer_missing_a_header_fails_the_load_and_keeps_the_entry(stored: Cache, seaweed: Any, s3_url: str,
                                                                       proxy: FaultProxy, header: str) -> None:
    # A proxy that strips a header S3 always sends: the load fails as a store failure, and
    # the entry is not judged by an answer that cannot be read (a first part without its
    # Content-Range would look like a whole entry cut short).
    proxy.rewrite_answers(r"GET \S*big\.pkl", lambda body: body, drop=(header,))
    with _cache(seaweed, s3_url, proxy.endpoint, concurrency=4) as cache:
        with pytest.raises(StoreUnavailable, match=header):
            cache.get("big.pkl")
        assert all(tier.corrupt_deleted == 0 for tier in cache.stats().values())
    assert any(fired.startswith("rewrote: GET") for fired in proxy.fired)
    assert np.array_equal(stored.get("big.pkl"), OLD), "the entry is kept"


_AT_EXIT = """
import atexit, sys
import numpy as np
from jangdok import Cache

def at_exit():  # threading's shutdown has run: a thread pool refuses new work from here on
    with Cache(sys.argv[1], endpoint_url=sys.argv[2], part_size=5 * 2**20, concurrency=4, fallback=False) as cache:
        cache.put("exit.pkl", np.arange(3_000_000, dtype=np.float64))
        print(float(cache.get("exit.pkl").sum()))

atexit.register(at_exit)
"""


def test_large_transfers_work_in_an_atexit_handler(seaweed: Any, s3_url: str, tmp_path: Any) -> None:
    script = tmp_path / "at_exit.py"
    script.write_text(_AT_EXIT)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": seaweed.identity[0], "AWS_SECRET_ACCESS_KEY": seaweed.identity[1],
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, str(script), s3_url, seaweed.endpoint], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert float(done.stdout) == float(OLD.sum())


def test_a_head_answer_without_its_time_is_a_store_failure(stored: Cache, seaweed: Any, s3_url: str,
                                                            proxy: FaultProxy) -> None:
    header = "Last-Modified"  # (a rewritten answer gets the Content-Length of its new body)
    proxy.rewrite_answers(r"HEAD \S*small\.pkl", lambda body: body, drop=(header,))
    with _cache(seaweed, s3_url, proxy.endpoint) as cache:
        with pytest.raises(StoreUnavailable, match=header):
            cache.store.stat("small.pkl")
    assert any(fired.startswith("rewrote: HEAD") for fired in proxy.fired)
