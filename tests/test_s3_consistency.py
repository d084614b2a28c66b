"""S3 under concurrent writers and killed ones: deletes pinned to a version, no crash debris,
and uploads whose answer was lost. Against SeaweedFS, and moto where AWS semantics matter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import BUCKET, s3_settings
from seaweed import SeaweedServer, credentials_env

import jangdok.entries
import jangdok.stores.s3.store
from jangdok import Cache, parse_location
from jangdok.stores import Store, open_store
from jangdok.stores.s3 import MIN_PART_SIZE, S3Store


def _store(server: SeaweedServer, url: str, **overrides: Any) -> Store:
    return open_store(parse_location(url), s3_settings(server, url, **overrides))


def _content(store: Store, key: str) -> bytes | None:
    reader = store.read(key)
    if reader is None:
        return None
    with reader:
        return reader.read()


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_a_versioned_delete_never_removes_an_entry_written_meanwhile(server_name: str, request, s3_url: str) -> None:
    server = request.getfixturevalue(server_name)
    store, writer = _store(server, s3_url), _store(server, s3_url)
    assert store.capabilities.conditional_delete  # probed before the interleaving is armed
    store.write("label.pkl", b"damaged entry")
    damaged = store.stat("label.pkl").version

    def good_entry_lands_now(**_: Any) -> None:
        store.client.meta.events.unregister("before-call.s3.DeleteObject", good_entry_lands_now)
        writer.write("label.pkl", b"a good entry")

    # The concurrent writer acts between the reader's decision and its delete request.
    store.client.meta.events.register("before-call.s3.DeleteObject", good_entry_lands_now)
    assert store.delete("label.pkl", version=damaged) is False
    assert _content(writer, "label.pkl") == b"a good entry"
    assert store.delete("label.pkl", version=store.stat("label.pkl").version) is True
    assert store.read("label.pkl") is None
    assert store.delete("label.pkl", version=damaged) is False  # missing: nothing to delete


_KILLED_UPLOADER = textwrap.dedent("""
    import os, sys, time
    from jangdok import Settings, parse_location
    from jangdok.stores.s3 import MIN_PART_SIZE, S3Store
    url, marker = sys.argv[1], sys.argv[2]
    store = S3Store(parse_location(url), Settings.resolve(cache_dir=url), part_size=MIN_PART_SIZE)

    def chunks():
        yield b"a" * (2 * MIN_PART_SIZE + 1024)  # two parts uploaded before the third is asked for
        open(marker, "w").close()
        time.sleep(120)
        yield b"never sent"

    store.write("big.pkl", chunks())
""")


def _list_uploads(server: SeaweedServer, prefix: str) -> list[dict[str, Any]]:
    return server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


def test_a_writer_killed_mid_upload_leaves_no_entry_and_cleanup_aborts_its_upload(
        seaweed, s3_url: str, s3_prefix: str, tmp_path: Path) -> None:
    marker = tmp_path / "uploading"
    env = {**os.environ, **credentials_env(seaweed), "JANGDOK_FALLBACK": "0"}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOADER, s3_url, str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, f"the uploader exited early with {child.returncode}"
            assert time.monotonic() < deadline, "the uploader never reached its third part"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert len(_list_uploads(seaweed, s3_prefix)) == 1
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        assert cache.get("big.pkl") is None and list(cache.keys()) == []
        assert cache.cleanup() == 0, "an upload younger than an hour may belong to a live writer"
        assert len(_list_uploads(seaweed, s3_prefix)) == 1
        assert cache.cleanup(older_than=0) == 1
    assert _list_uploads(seaweed, s3_prefix) == []


def test_put_now_and_then_aborts_stale_uploads_next_to_its_key(seaweed, s3_url: str, s3_prefix: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    client = seaweed.client()
    client.create_multipart_upload(Bucket=BUCKET, Key=s3_prefix + "old.pkl")
    monkeypatch.setattr(jangdok.entries, "CLEANUP_AGE", 0.0)
    monkeypatch.setattr(jangdok.entries, "CLEANUP_CHANCE", 1.0)
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        cache.put("new.pkl", {"fresh": True})
    assert _list_uploads(seaweed, s3_prefix) == []


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_a_completed_upload_whose_answer_was_lost_reports_success(server_name: str, request, s3_url: str) -> None:
    # AWS may answer a repeated CompleteMultipartUpload with NoSuchUpload once the first one
    # took effect; SeaweedFS and moto answer success, so the proxy gives the retry AWS's answer.
    server = request.getfixturevalue(server_name)
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    try:
        settings = s3_settings(server, s3_url, endpoint_url=proxy.endpoint)
        store = S3Store(parse_location(s3_url), settings, part_size=MIN_PART_SIZE)
        value = os.urandom(2 * MIN_PART_SIZE + 100)
        # The retry's connection, the first opened after the cut, gets AWS's answer.
        proxy.lose_answer_to(r"^POST \S+\?uploadId=", ("status", 404, "NoSuchUpload"))
        store.write("big.pkl", [value[:MIN_PART_SIZE], value[MIN_PART_SIZE:]])
        completions = [line for line in proxy.requests if line.startswith("POST") and "uploadId=" in line]
        assert len(completions) == 2, proxy.requests  # the answer to the first was lost
        assert not proxy.faults, "the retry met the NoSuchUpload answer"
        assert _content(store, "big.pkl") == value
        store.close()
    finally:
        proxy.close()


def test_cleanup_spares_an_old_upload_that_is_still_adding_parts(seaweed, s3_url: str, s3_prefix: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleaner's clock is set from the server's own times (SeaweedFS keeps them to the
    second), so no load between the requests can move the upload across the threshold."""
    client = seaweed.client()
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=s3_prefix + "slow.pkl")
    time.sleep(2.5)  # the part comes 2.5 s after the upload began: 1.5 s at least in whole seconds
    client.upload_part(Bucket=BUCKET, Key=s3_prefix + "slow.pkl", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * MIN_PART_SIZE)
    (listed,) = _list_uploads(seaweed, s3_prefix)
    (part,) = client.list_parts(Bucket=BUCKET, Key=s3_prefix + "slow.pkl", UploadId=upload["UploadId"])["Parts"]
    began, progressed = listed["Initiated"].timestamp(), part["LastModified"].timestamp()
    assert progressed - began >= 1.5
    now = [progressed + 1.0]  # the upload began 2.5 s ago or more, its last part came 1 s ago
    monkeypatch.setattr(jangdok.stores.s3.store, "_now", lambda: now[0])
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        assert cache.cleanup(older_than=1.5) == 0, "its last part is younger than the threshold"
        assert len(_list_uploads(seaweed, s3_prefix)) == 1
        now[0] = progressed + 2.0
        assert cache.cleanup(older_than=1.5) == 1
    assert _list_uploads(seaweed, s3_prefix) == []
