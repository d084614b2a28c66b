"""Retries against real network faults: a proxy between boto3 and SeaweedFS injects 503
SlowDown, 500s, resets and bodies cut mid-transfer; and the retry policy's bounds."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from faultproxy import FaultProxy
from helpers import s3_settings

from jangdok import Cache, StoreUnavailable, parse_location
from jangdok.retry import RetryExhausted, RetryPolicy
from jangdok.settings import Settings
from jangdok.stores.s3 import S3Store

BIG = np.random.default_rng(7).standard_normal(1_000_000).astype(np.float32)  # a 4 MB entry


@pytest.fixture
def cache_via_proxy(seaweed, s3_url: str, proxy: FaultProxy) -> Iterator[Cache]:
    """A cache whose first request opens the first proxied connection (the opening listing is
    skipped), so the first fault queued meets the first request of the test."""
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as direct:
        direct.put("big.pkl", BIG)
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, max_attempts=4)
    cache = Cache.from_settings(settings)
    cache._store = S3Store(parse_location(s3_url), settings)
    cache._store_label = "S3"
    yield cache
    cache.close()


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")])
def test_throttling_and_server_errors_are_retried(cache_via_proxy: Cache, proxy: FaultProxy,
                                                  status: int, code: str) -> None:
    proxy.faults.extend([("status", status, code), ("status", status, code)])
    assert np.array_equal(cache_via_proxy.get("big.pkl"), BIG)
    assert proxy.fired == [f"status {status} {code}"] * 2 and proxy.connections == 3


def test_connection_reset_before_the_response_is_retried(cache_via_proxy: Cache, proxy: FaultProxy) -> None:
    proxy.faults.append(("cut", 0))
    assert np.array_equal(cache_via_proxy.get("big.pkl"), BIG)
    assert proxy.fired == ["cut 0"]
    assert [line.split()[0] for line in proxy.requests] == ["GET", "GET"], "the cut request, then its retry"


def test_body_cut_mid_transfer_resumes_from_where_it_stopped(cache_via_proxy: Cache, proxy: FaultProxy) -> None:
    proxy.faults.extend([("cut", 1_000_000), ("cut", 1_500_000)])
    assert np.array_equal(cache_via_proxy.get("big.pkl"), BIG)
    assert proxy.fired == ["cut 1000000", "cut 1500000"]
    # The first request asks for one part (the whole of BIG); then two resumptions, each a
    # ranged GET starting past the bytes already received.
    assert len(proxy.ranges) == 3 and proxy.ranges[0].startswith("bytes=0-")
    starts = [int(r.split("=")[1].split("-")[0]) for r in proxy.ranges[1:]]
    assert 0 < starts[0] < starts[1] < BIG.nbytes


def test_persistent_transfer_failure_raises_and_never_deletes(cache_via_proxy: Cache, proxy: FaultProxy) -> None:
    # One connection makes some progress, then every resumption breaks before any body byte.
    proxy.faults.extend([("cut", 300_000)] + [("cut", 0)] * 8)
    with pytest.raises(StoreUnavailable, match="S3 error loading .*big.pkl: Connection timeout"):
        cache_via_proxy.get("big.pkl")
    proxy.faults.clear()
    assert cache_via_proxy.exists("big.pkl"), "a broken transfer is not a corrupt entry"
    assert np.array_equal(cache_via_proxy.get("big.pkl"), BIG)


def test_exhausted_throttling_names_the_code_and_attempts(cache_via_proxy: Cache, proxy: FaultProxy) -> None:
    proxy.faults.extend([("status", 503, "SlowDown")] * 8)
    with pytest.raises(StoreUnavailable, match=r"SlowDown \(HTTP 503\) after 4 attempt\(s\)"):
        cache_via_proxy.get("big.pkl")


def test_put_survives_a_throttled_upload(cache_via_proxy: Cache, proxy: FaultProxy) -> None:
    proxy.faults.append(("status", 503, "SlowDown"))
    cache_via_proxy.put("new.pkl", {"ok": True})
    assert proxy.fired == ["status 503 SlowDown"]
    puts = [line for line in proxy.requests if line.startswith("PUT") and line.endswith("/new.pkl")]
    assert len(puts) == 2, "the throttled upload, then its retry"
    assert cache_via_proxy.get("new.pkl") == {"ok": True}


def test_multipart_upload_is_atomic_and_aborted_on_failure(seaweed, s3_url: str) -> None:
    store = S3Store(parse_location(s3_url), s3_settings(seaweed, s3_url, part_size=5 * 1024 * 1024))
    payload = bytes(range(256)) * (13 * 1024 * 1024 // 256)  # three parts
    store.write("multi.bin", payload)
    with store.read("multi.bin") as reader:
        assert reader.read() == payload

    def failing_chunks():
        yield payload[: 11 * 1024 * 1024]  # two parts go up, then the producer fails
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write("multi.bin", failing_chunks())
    with store.read("multi.bin") as reader:
        assert reader.read() == payload, "readers still see the previous object"
    prefix = parse_location(s3_url).prefix
    uploads = store.client.list_multipart_uploads(Bucket="jangdok-test", Prefix=prefix).get("Uploads", [])
    assert uploads == [], "the failed upload was aborted"
    store.close()


def test_default_policy_gives_up_on_a_stalled_server_within_60_seconds() -> None:
    """Simulated clock: every attempt hangs for its full connect + read timeout."""
    settings = Settings()
    clock = [0.0]
    policy = RetryPolicy(settings.max_attempts, settings.total_timeout,
                         settings.connect_timeout + settings.read_timeout, clock=lambda: clock[0],
                         sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds),
                         uniform=lambda low, high: high)  # the worst jitter

    def stalled() -> None:
        clock[0] += settings.connect_timeout + settings.read_timeout
        raise TimeoutError("read timed out")

    with pytest.raises(RetryExhausted) as caught:
        policy.call(stalled, lambda exc: True, "test")
    assert clock[0] <= 60.0
    assert caught.value.attempts >= 2, "the defaults still retry a stall at least once"


def test_policy_does_not_retry_permanent_errors() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        RetryPolicy().call(denied, lambda exc: False, "test")
    assert len(calls) == 1


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    worst = RetryPolicy(base_delay=0.2, max_delay=5.0, uniform=lambda low, high: high)
    assert [worst.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert all(0 <= RetryPolicy().delay(3) <= 1.6 for _ in range(100))


def test_listing_follows_continuation_tokens(seaweed, s3_url: str) -> None:
    store = S3Store(parse_location(s3_url), s3_settings(seaweed, s3_url))
    store.list_page_size = 2
    keys = [f"k{n}.pkl" for n in range(7)]
    for key in keys:
        store.write(key, b"x")
    assert sorted(info.key for info in store.list()) == keys
    store.close()


def test_resumed_download_never_mixes_two_versions(seaweed, s3_url: str, proxy: FaultProxy) -> None:
    """The object is replaced while its download is broken: the resume is refused (ETag
    pinning) rather than stitching the new object's bytes onto the old one's."""
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as direct:
        direct.put("big.pkl", BIG)
        settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)
        store = S3Store(parse_location(s3_url), settings)
        proxy.faults.append(("cut", 1_000_000, lambda: direct.put("big.pkl", BIG * 2)))
        with pytest.raises(StoreUnavailable, match="replaced while it was being read"):
            with store.read("big.pkl") as reader:
                reader.read()
        assert np.array_equal(direct.get("big.pkl"), BIG * 2), "nothing was deleted or damaged"
        store.close()


def test_a_body_garbled_in_transit_is_read_again_and_never_deleted(cache_via_proxy: Cache, proxy: FaultProxy,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The checksum cannot tell damage in storage from damage on the wire; a second read can.
    proxy.faults.append(("flip", 2_000_000))
    with caplog.at_level(logging.DEBUG, logger="jangdok"):
        assert np.array_equal(cache_via_proxy.get("big.pkl"), BIG)
    gets = [line for line in proxy.requests if line.startswith("GET")]
    assert proxy.fired == ["flip 2000000"] and len(gets) == 2, "the garbled response was read, then a clean one"
    assert "checksum mismatch" in caplog.text and "deleted" not in caplog.text
    assert cache_via_proxy.exists("big.pkl")


def test_verify_reads_a_body_garbled_in_transit_again_and_deletes_nothing(cache_via_proxy: Cache,
                                                                          proxy: FaultProxy) -> None:
    """``jangdok verify --delete`` judges as loads do: damage must be seen twice in one version."""
    proxy.faults.append(("flip", 2_000_000))
    verdict = cache_via_proxy.verify("big.pkl", delete_damaged=True)
    assert proxy.fired == ["flip 2000000"]
    assert verdict.status == "ok" and not verdict.deleted
    assert cache_via_proxy.exists("big.pkl")
