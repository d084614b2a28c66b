"""S3 failures provoked for real against SeaweedFS: missing, wrong and read-only credentials,
unreachable endpoints, missing buckets; fallback; and secrets that never reach a message."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from helpers import BUCKET, s3_settings
from seaweed import READ_ONLY, READ_WRITE, free_ports

from jangdok import (
    AccessDenied,
    Cache,
    ConfigError,
    CredentialsError,
    NoCredentials,
    Settings,
    StoreUnavailable,
    mask_secret,
    parse_location,
)
from jangdok.stores.s3 import S3Store


def no_credentials(url: str, **overrides) -> Settings:
    return Settings(cache_dir=url, region="us-east-1", endpoint_url="http://127.0.0.1:9", **overrides)


def test_no_credentials_falls_back_with_the_seed_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache.from_settings(no_credentials("s3://waterandfish-s3/cache/", fallback_dir=str(tmp_path / "fb")))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        cache.put("label_data.pkl", [1, 2, 3])
        assert cache.get("label_data.pkl") == [1, 2, 3]
        cache.get("label_data.pkl")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "the fallback is announced once, not per call"
    assert "S3 client initialization failed: Unable to locate credentials" in warnings[0]
    assert "s3://waterandfish-s3/cache/" in warnings[0]
    assert cache.store_label == "local (fallback)"
    assert (tmp_path / "fb" / "waterandfish-s3" / "cache" / "label_data.pkl").is_file()
    assert cache.stat("label_data.pkl").store == "local (fallback)"
    assert "Unable to locate credentials" in cache.fallback_reason


def test_no_credentials_without_fallback_raises_with_what_was_tried() -> None:
    cache = Cache.from_settings(no_credentials("s3://waterandfish-s3/cache/", fallback=False))
    with pytest.raises(CredentialsError) as caught:
        cache.get("label_data.pkl")
    message = str(caught.value)
    assert message.startswith("S3 client initialization failed: Unable to locate credentials")
    assert "AWS_ACCESS_KEY_ID" in message and ".env" in message and "aws configure" in message


def test_wrong_secret_is_detected_when_the_cache_opens(seaweed, s3_url: str) -> None:
    # Even with fallback on: a rejected secret is a mistake to fix, not a reason to cache elsewhere.
    settings = s3_settings(seaweed, s3_url, identity=(READ_WRITE[0], "not-the-secret-000000000000"), fallback=True)
    with Cache.from_settings(settings) as cache, pytest.raises(CredentialsError) as caught:
        cache.store  # noqa: B018 - opening is what is tested
    assert not isinstance(caught.value, NoCredentials) and cache.fallback_reason is None
    message = str(caught.value)
    assert f"S3 error opening {s3_url}: Access Denied (SignatureDoesNotMatch)" in message
    assert "check the secret key" in message
    assert "not-the-secret" not in message and READ_WRITE[1] not in message
    assert message.count(mask_secret(READ_WRITE[0])) == 1, "the key and where it came from, said once"


def test_read_only_identity_gets_access_denied_naming_path_and_permission(seaweed, s3_url: str) -> None:
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as writer:
        writer.put("label_data.pkl", {"written": True})
    with Cache.from_settings(s3_settings(seaweed, s3_url, identity=READ_ONLY)) as reader:
        assert reader.get("label_data.pkl") == {"written": True}  # reading is allowed
        with pytest.raises(AccessDenied) as caught:
            reader.put("label_data.pkl", {"written": False})
        message = str(caught.value)
        assert f"S3 error saving {s3_url}label_data.pkl: Access Denied" in message
        assert "lacks s3:PutObject" in message
        assert f"****{READ_ONLY[0][-4:]}" in message and READ_ONLY[0] not in message
        with pytest.raises(AccessDenied, match="lacks s3:DeleteObject"):
            reader.delete("label_data.pkl")
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as writer:
        assert writer.get("label_data.pkl") == {"written": True}


def test_access_denied_is_not_retried(seaweed, s3_url: str) -> None:
    from faultproxy import FaultProxy

    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        settings = s3_settings(seaweed, s3_url, identity=READ_ONLY, endpoint_url=proxy.endpoint, max_attempts=5)
        with Cache.from_settings(settings) as cache, pytest.raises(AccessDenied):
            cache.put("denied.pkl", 1)
        prefix = s3_url.split("/", 3)[3]
        assert [r for r in proxy.requests if r.startswith("PUT")] == [f"PUT /{BUCKET}/{prefix}denied.pkl"]
    finally:
        proxy.close()


def test_closed_port_fails_within_bounds_with_a_connection_message() -> None:
    (port,) = free_ports(1)  # nothing listens there
    settings = Settings(cache_dir="s3://waterandfish-s3/cache/", endpoint_url=f"http://127.0.0.1:{port}",
                        access_key_id="AKIAEXAMPLEKEY00001", secret_access_key="secret-secret-secret",
                        region="us-east-1", fallback=False, max_attempts=3, connect_timeout=1, read_timeout=1)
    with pytest.raises(StoreUnavailable) as caught:
        Cache.from_settings(settings).get("label_data.pkl")
    message = str(caught.value)
    assert "S3 error opening s3://waterandfish-s3/cache/: Connection timeout" in message
    assert f"http://127.0.0.1:{port}" in message and "3 attempt(s)" in message
    # Timed alone, without building the client: 3 refused connections and at most 0.6 s of backoff.
    store = S3Store(parse_location(settings.cache_dir), settings)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check()
    assert time.monotonic() - started < 10


def test_unreachable_endpoint_at_open_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)
    settings = Settings(cache_dir="s3://waterandfish-s3/cache/", endpoint_url=f"http://127.0.0.1:{port}",
                        access_key_id="AKIAEXAMPLEKEY00001", secret_access_key="secret-secret-secret",
                        region="us-east-1", fallback_dir=str(tmp_path / "fb"), max_attempts=2)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        cache = Cache.from_settings(settings)
        cache.put("x.pkl", "still works")
        assert cache.get("x.pkl") == "still works"
    assert "Connection timeout" in cache.fallback_reason
    assert "using the local fallback folder" in caplog.text
    assert "secret-secret-secret" not in caplog.text


@pytest.mark.parametrize("fallback", [False, True])
def test_missing_bucket_is_a_config_error_even_with_fallback(seaweed, tmp_path: Path, fallback: bool) -> None:
    # A typo in CACHE_DIR must be loud: caching somewhere else would hide it.
    url = "s3://no-such-bucket-jangdok/cache/"
    settings = s3_settings(seaweed, url, fallback=fallback, fallback_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-jangdok' does not exist"):
        Cache.from_settings(settings).get("k")


def test_stalled_server_fails_within_the_total_timeout() -> None:
    from faultproxy import FaultProxy

    proxy = FaultProxy(upstream_port=9)  # every connection stalls; upstream is never dialled
    proxy.faults.extend([("stall",)] * 10)
    settings = Settings(cache_dir="s3://waterandfish-s3/cache/", endpoint_url=proxy.endpoint,
                        access_key_id="AKIAEXAMPLEKEY00001", secret_access_key="secret-secret-secret",
                        region="us-east-1", fallback=False, connect_timeout=0.5, read_timeout=0.5,
                        max_attempts=10, total_timeout=2.5)
    store = S3Store(parse_location(settings.cache_dir), settings)  # built before the clock starts
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Connection timeout"):
            store.check()
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    # Each stall lasts a whole read timeout; with no deadline, 10 of them and their backoff would
    # take over 15 s. The bound leaves load three times the deadline.
    assert 1 <= proxy.fired.count("stall") == proxy.connections < 10, "the deadline ended the retries"
    assert 0.9 < elapsed < 3 * 2.5, elapsed


def test_a_session_token_without_its_keys_is_named(seaweed, s3_url: str) -> None:
    settings = Settings(cache_dir=s3_url, endpoint_url=seaweed.endpoint, session_token="token-0000000000001",
                        fallback=False)
    with Cache.from_settings(settings) as cache, pytest.raises(NoCredentials) as caught:
        cache.store  # noqa: B018 - opening is what is tested
    message = str(caught.value)
    assert "AWS_SESSION_TOKEN is set" in message
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are missing there" in message
    assert "token-0000000000001" not in message


def test_a_malformed_region_is_a_config_error_not_a_botocore_one(seaweed, s3_url: str) -> None:
    with Cache.from_settings(s3_settings(seaweed, s3_url, region="eu west 1!")) as cache:
        with pytest.raises(ConfigError, match="check AWS_REGION"):
            cache.get("x.pkl")
