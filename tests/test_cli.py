"""The ``jangdok`` command, run as a user runs it (a subprocess), on a local folder and on
SeaweedFS: every command, its ``--json`` output parsed back, and its error exits."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy
from helpers import BUCKET, s3_settings
from seaweed import READ_ONLY, SeaweedServer, credentials_env

from jangdok import Cache
from jangdok.server import grpc_socket_path

LABEL = [np.arange(30 * 675, dtype=np.float32).reshape(30, 675) + i for i in range(4)]


@pytest.fixture
def env(backend: str, cache_url: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment a user would have: the cache named by CACHE_DIR, credentials for S3."""
    values = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    values.update({"CACHE_DIR": cache_url, "AWS_EC2_METADATA_DISABLED": "true"})
    if backend == "s3":
        values.update(credentials_env(request.getfixturevalue("seaweed")))
    return values


@pytest.fixture
def filled(cache: Cache) -> Cache:
    cache.put("labels/김치.pkl", LABEL, metadata={"TARGET_SEQ_LENGTH": 30})
    cache.put("labels/small.pkl", {"a": 1})
    cache.put("other.pkl", [1, 2, 3])
    return cache


def jangdok(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jangdok", *args], env=env, capture_output=True, text=True,
                          timeout=120, input=stdin)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode in (0, 3, 4), result.stderr
    return json.loads(result.stdout)


def test_help_lists_every_command_with_one_line() -> None:
    result = subprocess.run(["jangdok", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("ls", "stat", "get", "rm", "prune", "verify", "stats", "doctor", "server"):
        assert f"    {command} " in result.stdout
    assert "Exit status" in result.stdout


def test_options_go_before_or_after_the_command(filled: Cache, env: dict[str, str], cache_url: str) -> None:
    elsewhere = {**env, "CACHE_DIR": "some-other-folder"}
    before = as_json(jangdok(elsewhere, "--cache", cache_url, "--json", "ls"))
    after = as_json(jangdok(elsewhere, "ls", "--cache", cache_url, "--json"))
    assert [row["key"] for row in before] == [row["key"] for row in after] and len(before) == 3


def test_ls(filled: Cache, env: dict[str, str]) -> None:
    listed = as_json(jangdok(env, "ls", "--json"))
    assert [row["key"] for row in listed] == sorted(["labels/김치.pkl", "labels/small.pkl", "other.pkl"])
    by_size = as_json(jangdok(env, "ls", "labels/", "--sort", "size", "--reverse", "--json", "--long"))
    assert [row["key"] for row in by_size] == ["labels/김치.pkl", "labels/small.pkl"]
    assert by_size[0]["format"] == "jangdok v2 pickle" and by_size[0]["signed_by"] is None
    assert by_size[0]["metadata"] == {"TARGET_SEQ_LENGTH": 30}
    text = jangdok(env, "ls", "-l").stdout
    assert "labels/김치.pkl" in text and "KB" in text and "3 entries" in text
    assert "expired" not in text and not any(row["expired"] for row in by_size)


def test_ls_long_marks_an_expired_entry(cache: Cache, env: dict[str, str]) -> None:
    """Still listed (prune removes it) but a miss for get: -l says so rather than show it as live."""
    cache.put("fresh.pkl", 1, ttl=3600)
    cache.put("stale.pkl", 2, ttl=0.05)
    time.sleep(0.1)  # only ever further past its expiry
    rows = {row["key"]: row for row in as_json(jangdok(env, "ls", "-l", "--json"))}
    assert (rows["fresh.pkl"]["expired"], rows["stale.pkl"]["expired"]) == (False, True)
    lines = {line.split()[-1] if "(expired" not in line else line.split("(expired")[0].split()[-1]: line
             for line in jangdok(env, "ls", "-l").stdout.splitlines()[:-1]}
    assert "(expired" in lines["stale.pkl"] and "(expired" not in lines["fresh.pkl"]


def test_stat_shows_header_metadata_and_checksum(filled: Cache, env: dict[str, str]) -> None:
    shown = as_json(jangdok(env, "stat", "labels/김치.pkl", "--json"))
    assert shown["metadata"] == {"TARGET_SEQ_LENGTH": 30} and shown["check"]["status"] == "ok"
    text = jangdok(env, "stat", "labels/김치.pkl").stdout
    assert "checksum verified" in text and "TARGET_SEQ_LENGTH" in text


def test_get_summarises_or_writes_the_value(filled: Cache, env: dict[str, str], tmp_path: Path) -> None:
    assert "list of 4: ndarray float32 (30, 675)" in jangdok(env, "get", "labels/김치.pkl").stdout
    out = tmp_path / "label.pkl"
    assert jangdok(env, "get", "labels/김치.pkl", "-o", str(out)).returncode == 0
    assert all(np.array_equal(a, b) for a, b in zip(pickle.loads(out.read_bytes()), LABEL, strict=True))
    filled.put("array.pkl", LABEL[1])
    assert jangdok(env, "get", "array.pkl", "-o", str(tmp_path / "a.npy"), "--format", "npy").returncode == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), LABEL[1])
    assert jangdok(env, "get", "other.pkl", "-o", str(tmp_path / "o.json"), "--format", "json").returncode == 0
    assert json.loads((tmp_path / "o.json").read_text()) == [1, 2, 3]
    unwritable = jangdok(env, "get", "other.pkl", "-o", str(tmp_path / "no" / "such" / "folder.pkl"))
    assert unwritable.returncode == 1 and unwritable.stderr.count("\n") == 1 and "cannot write" in unwritable.stderr
    refused = jangdok(env, "get", "other.pkl", "-o", str(tmp_path / "o.npy"), "--format", "npy")
    assert refused.returncode == 1 and "use --format pickle" in refused.stderr
    assert as_json(jangdok(env, "get", "other.pkl", "--json"))["summary"] == "list of 3: int"


def test_rm_asks_first(filled: Cache, env: dict[str, str]) -> None:
    refused = jangdok(env, "rm", "other.pkl", stdin="")
    assert refused.returncode == 2 and "--yes" in refused.stderr and filled.exists("other.pkl")
    assert as_json(jangdok(env, "rm", "other.pkl", "--yes", "--json")) == {"removed": ["other.pkl"], "missing": []}
    assert jangdok(env, "rm", "--prefix", "labels/", "--yes").returncode == 0
    assert list(filled.keys()) == []
    missing = jangdok(env, "rm", "gone.pkl", "--yes")
    assert missing.returncode == 4 and "no entry 'gone.pkl'" in missing.stderr


def on_terminal(env: dict[str, str], *args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal as its stdin, where the user types ``answer``."""
    import pty

    main, terminal = pty.openpty()
    try:
        os.write(main, answer.encode() + b"\n")
        result = subprocess.run([sys.executable, "-m", "jangdok", *args], env=env, stdin=terminal,
                                capture_output=True, text=True, timeout=120)
    finally:
        os.close(main)
        os.close(terminal)
    return result


def test_prune(filled: Cache, env: dict[str, str]) -> None:
    filled.put("short-lived.pkl", 1, ttl=0.01)
    time.sleep(0.05)
    dry = as_json(jangdok(env, "prune", "--dry-run", "--json"))
    assert dry["removed"] == ["short-lived.pkl"] and dry["dry_run"] is True
    assert filled.exists("short-lived.pkl")
    assert "removed 1 entry" in jangdok(env, "prune", "--yes").stdout
    everything = as_json(jangdok(env, "prune", "--older-than", "0s", "--yes", "--json"))
    assert len(everything["removed"]) == 3 and list(filled.keys()) == []
    bad = jangdok(env, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


@pytest.mark.parametrize(("option", "value", "says"), [("--max-size", "5", "5GB, or 5B for bytes"),
                                                       ("--older-than", "30", "30d for days, or 30s for seconds")])
def test_prune_sizes_and_ages_need_a_unit(filled: Cache, env: dict[str, str], option: str, value: str,
                                          says: str) -> None:
    """A bare `--max-size 5` once meant 5 bytes, and removed every entry without asking."""
    refused = jangdok(env, "prune", option, value, "--yes")
    assert refused.returncode == 2 and "has no unit" in refused.stderr and says in refused.stderr
    assert len(list(filled.keys())) == 3
    document = json.loads(jangdok(env, "prune", option, value, "--yes", "--json").stdout)
    assert document["error"]["type"] == "UsageError" and document["error"]["exit"] == 2
    assert as_json(jangdok(env, "prune", option, value + ("B" if option == "--max-size" else "s"), "--dry-run",
                           "--json"))["dry_run"]


def test_prune_asks_before_removing_entries(filled: Cache, env: dict[str, str]) -> None:
    unasked = jangdok(env, "prune", "--older-than", "0s")
    assert unasked.returncode == 2 and "Remove 3 entries" in unasked.stderr and "pass --yes" in unasked.stderr
    declined = on_terminal(env, "prune", "--older-than", "0s", answer="n")
    assert declined.returncode == 0 and "Remove 3 entries" in declined.stderr and "nothing removed" in declined.stderr
    assert len(list(filled.keys())) == 3
    accepted = on_terminal(env, "prune", "--older-than", "0s", answer="y")
    assert accepted.returncode == 0 and "removed 3 entries" in accepted.stdout
    assert list(filled.keys()) == []
    nothing = jangdok(env, "prune", "--older-than", "0s")  # nothing to ask about: no terminal needed
    assert nothing.returncode == 0 and "Remove" not in nothing.stderr and "removed 0 entries" in nothing.stdout


def test_prune_dry_run_and_real_run_select_the_same_entries(filled: Cache, env: dict[str, str],
                                                             backend: str) -> None:
    filled.put("short-lived.pkl", 1, ttl=0.01)
    filled.put("newest.pkl", list(range(100)))
    time.sleep(0.05)
    if backend == "local":  # a crash leftover, old enough for cleanup (an hour)
        leftover = Path(filled.store.path("labels/small.pkl")).with_name(".jangdok-tmp-crashed")
        leftover.write_bytes(b"half an entry")
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    dry = as_json(jangdok(env, "prune", "--max-size", "2KB", "--dry-run", "--json"))
    text = jangdok(env, "prune", "--max-size", "2KB", "--dry-run").stdout
    assert "the real run also removes crash leftovers" in text
    real = as_json(jangdok(env, "prune", "--max-size", "2KB", "--yes", "--json"))
    assert sorted(real["removed"]) == sorted(dry["removed"])
    assert {"short-lived.pkl", "labels/김치.pkl"} <= set(dry["removed"])  # expired; alone over the bound
    assert real["bytes_freed"] == dry["bytes_freed"] and dry["leftovers"] == 0
    assert real["leftovers"] == (1 if backend == "local" else 0)  # counted apart, by the real run only
    everything = {"labels/김치.pkl", "labels/small.pkl", "other.pkl", "short-lived.pkl", "newest.pkl"}
    assert set(filled.keys()) == everything - set(dry["removed"])
    assert sum(found.size for found in filled.store.list()) <= 2000


def test_rm_prefix_deletes_in_batches(seaweed: SeaweedServer, s3_url: str, s3_prefix: str) -> None:
    """One listing per 1000 entries and one DeleteObjects per 1000 (each key pinned to its
    listed ETag), never a HEAD and a DELETE per key; counted through a real proxy."""
    client = seaweed.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda number: client.put_object(Bucket=BUCKET, Key=f"{s3_prefix}batch/{number:04d}.pkl",
                                                       Body=b"entry"), range(1005)))
    client.put_object(Bucket=BUCKET, Key=f"{s3_prefix}kept.pkl", Body=b"entry")
    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CACHE_"))}
        env.update({**credentials_env(seaweed), "AWS_ENDPOINT_URL": proxy.endpoint, "CACHE_DIR": s3_url})
        removed = as_json(jangdok(env, "rm", "--prefix", "batch/", "--yes", "--json"))
    finally:
        proxy.close()
    assert len(removed["removed"]) == 1005 and removed["kept"] == []
    requests = proxy.requests
    listings = [line for line in requests if line.startswith("GET ") and "batch%2F" in line]
    probes = [line for line in requests if line.startswith("PUT ") and ".jangdok-tmp-probe-" in line]
    batches = [line for line in requests if line.startswith("POST ") and line.endswith("?delete")]
    assert len(listings) == 2 and len(probes) <= 1  # a capability probe, once per store: put, try, delete
    assert len(batches) == 2 + len(probes), requests
    assert not [line for line in requests if line.startswith(("HEAD ", "DELETE ")) and "/batch/" in line]
    assert len(requests) <= 1 + len(listings) + 3 * len(probes) + 2, requests  # 1: opening checks the bucket
    assert [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=s3_prefix)["Contents"]] == [
        f"{s3_prefix}kept.pkl"]


def _damage(cache: Cache, key: str) -> None:
    with cache.store.read(key) as reader:
        data = bytearray(reader.read())
    data[-20] ^= 0xFF
    cache.store.write(key, bytes(data))


def test_verify_reports_and_deletes_damage(filled: Cache, env: dict[str, str]) -> None:
    assert jangdok(env, "verify").returncode == 0
    _damage(filled, "labels/김치.pkl")
    found = jangdok(env, "verify", "--json")
    assert found.returncode == 3
    report = json.loads(found.stdout)
    assert report["counts"] == {"damaged": 1, "ok": 2} and report["problems"][0]["key"] == "labels/김치.pkl"
    assert filled.exists("labels/김치.pkl")  # reported, not deleted
    stat = jangdok(env, "stat", "labels/김치.pkl")
    assert stat.returncode == 3 and "damaged" in stat.stdout
    assert jangdok(env, "ls", "-l").returncode == 0
    assert filled.exists("labels/김치.pkl")  # looking never deletes
    assert jangdok(env, "verify", "--delete").returncode == 3
    assert not filled.exists("labels/김치.pkl") and jangdok(env, "verify").returncode == 0


def test_stats(filled: Cache, env: dict[str, str]) -> None:
    tiers = as_json(jangdok(env, "stats", "--json"))["tiers"]
    [(name, tier)] = tiers.items()
    assert name == filled.store_label and tier["entries"] == 3 and tier["bytes"] > 4 * LABEL[0].nbytes


def test_stats_and_ls_show_the_local_tier(seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update({**credentials_env(seaweed), "CACHE_DIR": s3_url, "CACHE_LOCAL_DIR": str(tmp_path / "tier")})
    writer = Cache.from_settings(s3_settings(seaweed, s3_url))
    for key in ("a.pkl", "b.pkl", "c.pkl"):
        writer.put(key, key)
    assert jangdok(env, "get", "b.pkl").returncode == 0  # read through: now copied
    tiers = as_json(jangdok(env, "stats", "--json"))["tiers"]
    assert tiers["S3"]["entries"] == 3 and tiers["local tier"]["entries"] == 1
    rows = as_json(jangdok(env, "ls", "--long", "--json"))
    assert {row["key"]: row["tier"] for row in rows} == {"a.pkl": "S3", "b.pkl": "S3+local", "c.pkl": "S3"}


def test_doctor(env: dict[str, str], backend: str) -> None:
    result = jangdok(env, "doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["failures"] == 0
    if backend == "s3":
        assert any("s3:PutObject" in finding["message"] for finding in report["findings"])


def _doctor(env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    result = jangdok(env, "doctor", "--json")
    return result.returncode, json.loads(result.stdout)["findings"]


def _failed(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [finding for finding in findings if finding["status"] == "fail"]


def _user(**settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "JANGDOK_MAX_ATTEMPTS": "1", **settings}


@pytest.mark.parametrize("named_by", ["CACHE_DIR", "S3_BUCKET_NAME"])
def test_doctor_with_a_mistyped_bucket_creates_nothing(seaweed: SeaweedServer, tmp_path: Path,
                                                       named_by: str) -> None:
    """SeaweedFS creates a missing bucket on an admin's first PUT: the write probe must not run
    once the listing said the bucket is missing, or the next run would silently use it."""
    typo = f"jangdok-typo-{os.urandom(4).hex()}"
    where = ({"CACHE_DIR": f"s3://{typo}/cache/"} if named_by == "CACHE_DIR"
             else {"CACHE_DIR": str(tmp_path / "cache"), "S3_BUCKET_NAME": typo})
    env = _user(**credentials_env(seaweed), **where)
    status, findings = _doctor(env)
    [failure] = _failed(findings)
    assert status == 3 and failure["message"].startswith("S3 check of ")
    assert "does not exist" in failure["error"] and failure["fix"].startswith(f"fix {named_by} (")
    assert not any(finding["message"].startswith("put ") for finding in findings)
    assert any("skipped" in finding["message"] for finding in findings if finding["status"] == "note")
    self_test = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "test_s3_cache.py")],
                               env=env, capture_output=True, text=True, timeout=120)
    assert self_test.returncode == 1 and "does not exist" in self_test.stdout and "put (s3:PutObject)" not in \
        self_test.stdout
    buckets = [bucket["Name"] for bucket in seaweed.client().list_buckets()["Buckets"]]
    assert typo not in buckets and BUCKET in buckets


def test_doctor_advice_names_the_setting_at_fault(seaweed: SeaweedServer, s3_url: str) -> None:
    """Checked against SeaweedFS's own answers: InvalidAccessKeyId for an unknown key id,
    SignatureDoesNotMatch for a wrong secret."""
    good = {**credentials_env(seaweed), "CACHE_DIR": s3_url}
    cases = {
        "unknown key id": ({"AWS_ACCESS_KEY_ID": "JDKNOSUCHKEY0042"}, "AWS_ACCESS_KEY_ID (from environment) is not "
                                                                     "a key the server at"),
        "wrong secret": ({"AWS_SECRET_ACCESS_KEY": "not-the-secret-0000000000"}, "AWS_SECRET_ACCESS_KEY (from "
                                                                                 "environment) is not the secret of "
                                                                                 "access key ****0001"),
        "endpoint without a scheme": ({"AWS_ENDPOINT_URL": seaweed.endpoint.removeprefix("http://")},
                                      "fix AWS_ENDPOINT_URL (named above)"),
        "unreachable endpoint": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "check the network and AWS_ENDPOINT_URL "
                                                                             "(http://127.0.0.1:9, from environment)"),
    }
    for case, (change, advice) in cases.items():
        status, findings = _doctor(_user(**{**good, **change}))
        fixes = [finding["fix"] for finding in _failed(findings)]
        assert status == 3 and fixes and all(fix.startswith(advice) for fix in fixes), (case, fixes)
        blamed = {"unknown key id": ["SECRET"], "wrong secret": ["AWS_ACCESS_KEY_ID"]}
        for other in blamed.get(case, ["fix CACHE_DIR", "S3_BUCKET_NAME", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"]):
            assert not any(other in fix for fix in fixes), (case, fixes)
        assert not any(finding["message"].startswith("put ") for finding in findings)  # no writes after a failure
        claims = [finding["message"] for finding in _failed(findings)
                  if "accepted" in finding["message"] or "found (" in finding["message"]]
        assert not claims, f"{case}: a failed check must not say what passing would have shown: {claims}"


def test_doctor_advice_for_a_server_that_is_not_s3(tmp_path: Path) -> None:
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a console, not the S3 API</html>")

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        try:
            status, findings = _doctor(_user(AWS_ENDPOINT_URL=f"http://127.0.0.1:{web.server_port}",
                                             AWS_ACCESS_KEY_ID="JDKSOMEKEY000001", AWS_SECRET_ACCESS_KEY="secret-0001",
                                             AWS_DEFAULT_REGION="us-east-1", CACHE_DIR="s3://bucket/cache/"))
        finally:
            web.shutdown()
    [failure] = _failed(findings)
    assert status == 3 and "does not answer like an S3 server" in failure["error"]
    assert failure["fix"] == "fix AWS_ENDPOINT_URL (named above)"


@pytest.mark.parametrize("where", ["s3://some-bucket/team/cache/", "local"])
def test_doctor_shows_paths_under_the_users_cache_dir(tmp_path: Path, where: str) -> None:
    """The path line joins the user's own CACHE_DIR, not a fixed example; a local folder that
    does not exist yet is checked beside where it would be, and not created."""
    cache_dir = where if where != "local" else str(tmp_path / "not" / "yet")
    status, findings = _doctor(_user(CACHE_DIR=cache_dir, AWS_ENDPOINT_URL="http://127.0.0.1:9"))
    [paths] = [finding for finding in findings if finding["message"].startswith("path detection")]
    assert paths["status"] == "ok" and f"{cache_dir.rstrip('/')}/label_data.pkl" in paths["message"]
    assert "waterandfish" not in json.dumps(findings)
    if where == "local":
        assert status == 0 and not (tmp_path / "not").exists()
        assert any("does not exist yet" in finding["message"] for finding in findings)
        assert all(finding["status"] == "ok" for finding in findings if finding["message"].startswith("local"))


def test_error_exits(cache: Cache, env: dict[str, str], backend: str, request: pytest.FixtureRequest) -> None:
    cache.put("x.pkl", 1)
    missing = jangdok(env, "stat", "nope.pkl")
    assert missing.returncode == 4 and missing.stderr.startswith("jangdok: no entry 'nope.pkl'")
    assert jangdok(env, "get", "nope.pkl").returncode == 4
    if backend != "s3":
        return
    unreachable = jangdok({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "JANGDOK_MAX_ATTEMPTS": "1"}, "ls")
    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1 and "Connection" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    read_only = {**env, **credentials_env(request.getfixturevalue("seaweed"), READ_ONLY)}
    denied = jangdok(read_only, "rm", "x.pkl", "--yes")
    assert denied.returncode == 1 and "Access Denied" in denied.stderr and "s3:DeleteObject" in denied.stderr
    debug = jangdok({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "JANGDOK_MAX_ATTEMPTS": "1"}, "ls", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


UNREACHABLE = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "JDKUNREACHABLE01",
               "AWS_SECRET_ACCESS_KEY": "unreachable-secret-000000", "AWS_DEFAULT_REGION": "us-east-1",
               "CACHE_DIR": "s3://nowhere/cache/", "JANGDOK_MAX_ATTEMPTS": "1"}
# (command line, environment besides a local cache holding other.pkl, exit status, error type)
JSON_ERRORS = [
    (["ls"], UNREACHABLE, 1, "StoreUnavailable"),
    (["stat", "nope.pkl"], {}, 4, "MissingEntry"),
    (["get", "nope.pkl"], {}, 4, "MissingEntry"),
    (["get", "other.pkl", "-o", "/nonexistent-folder/x.pkl"], {}, 1, "CommandError"),
    (["rm", "other.pkl"], {}, 2, "UsageError"),  # no --yes, and no terminal to ask on
    (["rm", "--prefix", "nothing-here/", "--yes"], {}, 4, "MissingEntry"),
    (["prune", "--max-size", "5"], {}, 2, "UsageError"),
    (["prune", "--older-than", "0s"], {}, 2, "UsageError"),  # no --yes
    (["verify"], UNREACHABLE, 1, "StoreUnavailable"),
    (["stats"], UNREACHABLE, 1, "StoreUnavailable"),
    (["ls"], {"CACHE_DIR": "s3://"}, 1, "InvalidLocation"),
    (["server", "--port", "0"], {}, 2, "UsageError"),
    (["frobnicate"], {}, 2, "UsageError"),
    ([], {}, 2, "UsageError"),
]


@pytest.mark.parametrize(("arguments", "extra", "status", "kind"), JSON_ERRORS,
                         ids=[" ".join(case[0]) or "no command" for case in JSON_ERRORS])
def test_json_errors_are_one_document_on_stdout(tmp_path: Path, arguments: list[str], extra: dict[str, str],
                                                status: int, kind: str) -> None:
    """A script reading stdout gets a document on every error, and the same exit status."""
    folder = tmp_path / "cache"
    Cache(str(folder)).put("other.pkl", [1, 2, 3])
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update({"CACHE_DIR": str(folder), "AWS_EC2_METADATA_DISABLED": "true", **extra})
    result = jangdok(env, *arguments, "--json") if arguments else jangdok(env, "--json")
    assert result.returncode == status, result.stderr
    assert json.loads(result.stdout) == {"error": {"type": kind, "message": ANY_TEXT, "exit": status}}
    assert result.stderr.strip() and "Traceback" not in result.stderr


def test_json_error_of_a_busy_port_and_of_doctor(tmp_path: Path) -> None:
    import socket

    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    with socket.create_server(("127.0.0.1", 0)) as busy:
        result = jangdok(env, "server", "--port", str(busy.getsockname()[1]), "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["type"] == "UsageError"
    assert "is not free" in json.loads(result.stdout)["error"]["message"]
    failing = jangdok({**env, **UNREACHABLE}, "doctor", "--json")  # its own document, with the failures
    assert failing.returncode == 3 and json.loads(failing.stdout)["failures"] >= 1


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other.strip()) and "\n" not in other

    def __repr__(self) -> str:
        return "<one line of text>"


ANY_TEXT = _AnyText()


class ServerCommand:
    """``jangdok server`` run as a user runs it, in a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.plain = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CACHE_"))}
        self.process = subprocess.Popen([sys.executable, "-m", "jangdok", "server", "--dir", str(workdir)],
                                        env=self.plain, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        starting = self.process.stderr.readline()  # said as soon as weed is launched, before any wait
        found = re.search(r"starting SeaweedFS \(pid (\d+)\)", starting)
        assert found, starting + self.process.stderr.read()
        self.weed = int(found.group(1))
        self.ports = _weed_ports(self.weed)

    def exports(self) -> dict[str, str]:
        exports = {}
        while len(exports) < 5:
            line = self.process.stdout.readline()
            assert line, self.process.stderr.read()
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        return exports

    def stop(self, number: int = signal.SIGTERM) -> tuple[str, str]:
        """Stop it with ``number``; if it does not end, kill it and the server it started (a
        failing test must not leave either running) before failing."""
        self.process.send_signal(number)
        try:
            return self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.weed, signal.SIGKILL)
            self.process.communicate()
            raise


def _weed_arguments(pid: int) -> list[str]:
    """A process's command line. Popen returns once exec has closed its pipe, which the kernel
    does before it lays out the new program's arguments: until then they read empty."""
    while not (arguments := Path(f"/proc/{pid}/cmdline").read_bytes()):
        time.sleep(0.01)
    return arguments.decode().split("\0")


def _weed_ports(pid: int) -> dict[str, int]:
    """The ports on a running ``weed server``'s command line, by option (``s3.port.grpc``)."""
    options = (argument.lstrip("-").partition("=") for argument in _weed_arguments(pid))
    return {name: int(value) for name, _, value in options if "port" in name.split(".") and value not in ("", "0")}


def _grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The gRPC socket files of a ``weed server``, from the ports on its command line."""
    return [grpc_socket_path(option.partition(".")[0], port) for option, port in ports.items()
            if option.endswith(".port.grpc")]


def _listening(ports: Iterable[int]) -> set[int]:
    """Which of these TCP ports have a listening socket on this machine (from /proc/net)."""
    wanted, found = set(ports), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rpartition(":")[2], 16)
            if fields[3] == "0A" and port in wanted:  # 0A: TCP_LISTEN
                found.add(port)
    return found


def _assert_gone(server: ServerCommand) -> None:
    """Nothing the command started is left: no process of weed's session, no listening port."""
    with pytest.raises(ProcessLookupError):
        os.kill(server.weed, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.weed, 0)  # weed leads a session (and process group) of its own
    assert _listening(server.ports.values()) == set()
    assert [path for path in _grpc_sockets(server.ports) if path.exists()] == []


def test_server_starts_prints_exports_and_stops_leaving_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "weed"
    server = ServerCommand(workdir)
    try:
        exports = server.exports()
        user = {**server.plain, **exports, "AWS_EC2_METADATA_DISABLED": "true"}
        assert jangdok(user, "doctor").returncode == 0
        Cache(exports["CACHE_DIR"], endpoint_url=exports["AWS_ENDPOINT_URL"], fallback=False,
              access_key_id=exports["AWS_ACCESS_KEY_ID"], secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
              region="us-east-1").put("hello.pkl", "world")
        assert [row["key"] for row in as_json(jangdok(user, "ls", "--json"))] == ["hello.pkl"]
        sockets = _grpc_sockets(server.ports)
        assert len(sockets) == 4 and all(path.exists() for path in sockets)
    finally:
        server.stop(signal.SIGTERM)
    assert server.process.returncode == 0
    _assert_gone(server)
    assert list(workdir.glob("*.sock")) == []


def _cache_for(exports: dict[str, str]) -> Cache:
    return Cache(exports["CACHE_DIR"], endpoint_url=exports["AWS_ENDPOINT_URL"], fallback=False,
                 access_key_id=exports["AWS_ACCESS_KEY_ID"], secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
                 region="us-east-1")


@pytest.mark.usefixtures("ctrl_c_handled")
def test_server_restarts_on_a_folder_it_used_before(tmp_path: Path) -> None:
    """Its bucket is already there (BucketAlreadyOwnedByYou), and so is its readiness probe's:
    both are fine, and the entries written before are served again under the new keys."""
    workdir = tmp_path / "weed"
    first = ServerCommand(workdir)
    try:
        with _cache_for(first.exports()) as cache:
            cache.put("kept.pkl", LABEL)
    finally:
        first.stop(signal.SIGTERM)
    assert first.process.returncode == 0
    _assert_gone(first)
    second = ServerCommand(workdir)
    try:
        exports = second.exports()
        with _cache_for(exports) as cache:
            assert all(np.array_equal(a, b) for a, b in zip(cache.get("kept.pkl"), LABEL, strict=True))
    finally:
        _, stderr = second.stop(signal.SIGINT)
    assert second.process.returncode == 0 and "Traceback" not in stderr
    _assert_gone(second)


@pytest.mark.usefixtures("ctrl_c_handled")
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_stopped_during_its_startup_wait_leaves_nothing_running(tmp_path: Path, number: int) -> None:
    server = ServerCommand(tmp_path / "weed")
    # Frozen, weed can never become ready: the command is in its startup wait for good (it
    # announces weed at launch, seconds before weed could answer). Its stop must then end with
    # SIGKILL, which a stopped process does not hold back.
    os.kill(server.weed, signal.SIGSTOP)
    stdout, stderr = server.stop(number)
    assert "export" not in stdout  # it was still waiting
    assert server.process.returncode == 128 + number, stderr  # 130 for Ctrl-C, 143 for SIGTERM
    assert "Traceback" not in stderr and "interrupted: the server was stopped while starting" in stderr
    _assert_gone(server)


def test_colours_and_progress_bars_only_on_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    folder = tmp_path / "cache"
    cache = Cache(str(folder))
    for number in range(60):  # enough keys for verify to show a bar
        cache.put(f"k{number}.pkl", number)
    env = {**os.environ, "CACHE_DIR": str(folder)}
    env.pop("NO_COLOR", None)
    piped = jangdok(env, "verify")
    assert "\033[" not in piped.stdout + piped.stderr and "verifying" not in piped.stderr
    main, terminal = pty.openpty()
    # A real terminal has a size; without one tqdm draws a bar 0 columns wide.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        process = subprocess.Popen([sys.executable, "-m", "jangdok", "ls", "--long"], env=env, stdout=terminal,
                                   stderr=terminal, stdin=subprocess.DEVNULL)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(main)
    text = shown.decode(errors="replace")
    assert "reading headers" in text and "\033[2m60 entries" in text  # a bar on stderr, colour on stdout
