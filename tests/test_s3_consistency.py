"""S3 under concurrent writers and killed ones: deletes pinned to a version, no crash debris,
and uploads whose answer was lost. Against SeaweedFS, and moto where AWS semantics matter."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import BUCKET, raw_objects, s3_settings
from seaweed import SeaweedServer, credentials_env

import jangdok.entries
import jangdok.stores.s3.store
from jangdok import Cache, StoreUnavailable, parse_location
from jangdok.settings import MIN_PART_SIZE
from jangdok.stores import Store, open_store
from jangdok.stores.s3 import S3Store
from jangdok.stores.s3.listing import MOST_PAGES_WITHOUT_PROGRESS


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


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_a_batch_delete_never_removes_an_entry_rewritten_since_it_was_listed(
        server_name: str, request: pytest.FixtureRequest, s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """What prune and cleanup delete: each object in the version listed, on a server that
    honours a batch's ETag pins (SeaweedFS) and on one that ignores them (moto) alike."""
    server = request.getfixturevalue(server_name)
    store, writer = _store(server, s3_url), _store(server, s3_url)
    for key in ("old.pkl", "rewritten.pkl", "gone.pkl"):
        store.write(key, b"an entry listed as stale")
    listed = sorted(store.list(), key=lambda found: found.key)
    writer.write("rewritten.pkl", b"a good entry, saved again since the listing")
    writer.delete("gone.pkl")
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert store.delete_many(listed) == ["old.pkl"]
    assert _content(writer, "rewritten.pkl") == b"a good entry, saved again since the listing"
    assert [found.key for found in store.list()] == ["rewritten.pkl"]
    assert "could not delete" not in caplog.text, "a condition that failed is no error"


_KILLED_UPLOADER = textwrap.dedent("""
    import os, sys, time
    from jangdok import Settings, parse_location
    from jangdok.settings import MIN_PART_SIZE
    from jangdok.stores.s3 import S3Store
    url, marker = sys.argv[1], sys.argv[2]
    store = S3Store(parse_location(url), Settings.resolve(cache_dir=url, part_size=MIN_PART_SIZE))

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
        settings = s3_settings(server, s3_url, endpoint_url=proxy.endpoint, part_size=MIN_PART_SIZE)
        store = S3Store(parse_location(s3_url), settings)
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


# -- listings, as a man in the middle on an http:// path may write them ---------------------------
# Requests are signed, answers are not: the proxy rewrites listing answers without any credential.

_OLD = "2001-01-01T00:00:00.000Z"


def _objects_page(prefix: str, *items: tuple[str, str], truncated: str = "") -> bytes:
    """A ListObjectsV2 answer naming (key, ETag) items last modified in 2001; ``truncated``: the
    continuation token it says to follow."""
    contents = "".join(f"<Contents><Key>{key}</Key><LastModified>{_OLD}</LastModified><ETag>{etag}</ETag>"
                       "<Size>28</Size><StorageClass>STANDARD</StorageClass></Contents>" for key, etag in items)
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{truncated}</NextContinuationToken>"
            if truncated else "<IsTruncated>false</IsTruncated>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(items)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"{more}{contents}</ListBucketResult>").encode()


def _uploads_page(*uploads: tuple[str, str], markers: tuple[str, str] | None = None) -> bytes:
    """A ListMultipartUploads answer naming (key, upload id) uploads begun in 2001."""
    listed = "".join(f"<Upload><Key>{key}</Key><UploadId>{upload}</UploadId><Initiated>{_OLD}</Initiated></Upload>"
                     for key, upload in uploads)
    more = (f"<IsTruncated>true</IsTruncated><NextKeyMarker>{markers[0]}</NextKeyMarker>"
            f"<NextUploadIdMarker>{markers[1]}</NextUploadIdMarker>" if markers else "<IsTruncated>false</IsTruncated>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult '
            f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>{BUCKET}</Bucket><MaxUploads>1000</MaxUploads>'
            f"{more}{listed}</ListMultipartUploadsResult>").encode()


def _listings(proxy: FaultProxy, what: str = "list-type=2") -> list[str]:
    return [line for line in proxy.requests if line.startswith("GET ") and what in line]


def test_cleanup_never_acts_on_what_a_forged_listing_names_outside_the_prefix(
        seaweed, proxy: FaultProxy, s3_url: str, s3_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """cleanup (which put runs about once in 64 writes) lists stale probes and uploads; a forged
    answer names an object and an upload of someone else's, next to the cache."""
    client = seaweed.client()
    ledger = s3_prefix.replace("cache/", "finance/ledger-2025.csv")
    etag = client.put_object(Bucket=BUCKET, Key=ledger, Body=b"precious, not a cache entry\n")["ETag"]
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=ledger + ".new")["UploadId"]
    proxy.rewrite_answers(r"^GET \S+prefix=\S*jangdok-tmp-", lambda body: _objects_page(s3_prefix, (ledger, etag)))
    proxy.rewrite_answers(r"^GET \S+\?uploads", lambda body: _uploads_page((ledger + ".new", upload)), status=200)
    with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache, \
            caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.cleanup(older_than=0) == 0
    assert {line.split("&")[0].split("?")[1] for line in proxy.fired if line.startswith("rewrote")} == \
        {"uploads", "list-type=2"}, proxy.fired
    assert client.get_object(Bucket=BUCKET, Key=ledger)["Body"].read() == b"precious, not a cache entry\n"
    assert [found["UploadId"] for found in _list_uploads(seaweed, ledger)] == [upload]
    assert not [line for line in proxy.requests if "finance" in line and not line.startswith("GET /jangdok-test?")]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("finance/ledger-2025.csv" in text and "outside the prefix" in text
                                      for text in warnings), warnings
    client.abort_multipart_upload(Bucket=BUCKET, Key=ledger + ".new", UploadId=upload)


def test_a_listed_key_outside_the_prefix_is_never_taken_for_an_entry(
        seaweed, proxy: FaultProxy, s3_url: str, s3_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    # 't-.../other/b.pkl' is as long as 't-.../cache/', so cutting the prefix off by its length
    # alone would make it the entry 'b.pkl'.
    foreign = s3_prefix.replace("cache/", "other/") + "b.pkl"
    assert len(foreign) == len(s3_prefix + "b.pkl")
    proxy.rewrite_answers(r"^GET \S+\?list-type=2&prefix=\S+&max-keys=1000",
                          lambda body: body.replace(b"</ListBucketResult>", _objects_page(
                              s3_prefix, (foreign, '"0"')).split(b"<IsTruncated>false</IsTruncated>")[1]))
    with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache, \
            caplog.at_level(logging.WARNING, logger="jangdok"):
        cache.put("a.pkl", 1)
        assert list(cache.keys()) == ["a.pkl"]
        assert list(cache.keys()) == ["a.pkl"]
    assert len(_listings(proxy, "max-keys=1000")) == 2 and len(proxy.fired) == 2, proxy.fired
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(foreign in text for text in warnings), "one warning per listing"


def test_stale_probes_are_deleted_only_in_the_version_listed(
        seaweed, proxy: FaultProxy, s3_url: str, s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe object a crash left is removed by cleanup; a listing that names it with another
    ETag than it has removes nothing."""
    probe = s3_prefix + ".jangdok-tmp-probe-0123456789abcdef"
    seaweed.client().put_object(Bucket=BUCKET, Key=probe, Body=b"jangdok capability probe")
    forging = [True]
    proxy.rewrite_answers(r"^GET \S+prefix=\S*jangdok-tmp-", lambda body: re.sub(
        rb"<ETag>[^<]*</ETag>", b"<ETag>&#34;0123456789abcdef0123456789abcdef&#34;</ETag>", body)
        if forging[0] else body)
    monkeypatch.setattr(jangdok.stores.s3.store, "_now", lambda: time.time() + 86400)  # every probe is stale
    with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache:
        assert cache.cleanup() == 0
        assert raw_objects(seaweed, probe) == {probe: b"jangdok capability probe"}
        forging[0] = False
        assert cache.cleanup() == 1
    assert raw_objects(seaweed, probe) == {}
    assert len([line for line in proxy.fired if "jangdok-tmp-" in line]) == 2


@pytest.mark.parametrize("operation", ["keys", "prune", "cleanup"])
def test_a_listing_that_leads_back_to_a_page_already_listed_ends_with_an_error(
        seaweed, proxy: FaultProxy, s3_url: str, s3_prefix: str, operation: str) -> None:
    """IsTruncated with the same token (or markers) again: each request succeeds, so no timeout
    would ever end it."""
    proxy.rewrite_answers(r"^GET \S+\?list-type=2&prefix=\S+&max-keys=1000",
                          lambda body: _objects_page(s3_prefix, truncated="same"))
    proxy.rewrite_answers(r"^GET \S+\?uploads", lambda body: _uploads_page(markers=("same", "same")), status=200)
    with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache:
        act = {"keys": lambda: list(cache.keys()), "prune": lambda: cache.prune(older_than=0),
               "cleanup": lambda: cache.cleanup(older_than=0)}[operation]
        with pytest.raises(StoreUnavailable) as raised:
            act()
    message = str(raised.value)
    assert proxy.endpoint in message and "leads back to one already listed" in message, message
    assert len(_listings(proxy, "uploads" if operation == "cleanup" else "max-keys=1000")) == 2


def test_a_listing_that_never_advances_ends_after_a_bounded_number_of_pages(
        seaweed, proxy: FaultProxy, s3_url: str, s3_prefix: str) -> None:
    """A new token on every page, but never a key past those listed: the same entry again."""
    pages = itertools.count()
    proxy.rewrite_answers(r"^GET \S+\?list-type=2&prefix=\S+&max-keys=1000", lambda body: body.replace(
        b"<IsTruncated>false</IsTruncated>",
        b"<IsTruncated>true</IsTruncated><NextContinuationToken>%d</NextContinuationToken>" % next(pages)))
    with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache:
        cache.put("a.pkl", 1)
        with pytest.raises(StoreUnavailable) as raised:
            list(cache.keys())
    assert proxy.endpoint in str(raised.value) and "not advancing" in str(raised.value)
    # The first page brings a.pkl; then MOST_PAGES_WITHOUT_PROGRESS pages bring it again.
    assert len(_listings(proxy, "max-keys=1000")) == MOST_PAGES_WITHOUT_PROGRESS + 1
