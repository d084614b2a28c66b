"""The ``jangdok`` command, run as a user runs it (a subprocess), on a local folder and on
SeaweedFS: every command, its ``--json`` output parsed back, and its error exits."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import s3_settings
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


def test_prune(filled: Cache, env: dict[str, str]) -> None:
    filled.put("short-lived.pkl", 1, ttl=0.01)
    time.sleep(0.05)
    dry = as_json(jangdok(env, "prune", "--dry-run", "--json"))
    assert dry["removed"] == ["short-lived.pkl"] and dry["dry_run"] is True
    assert filled.exists("short-lived.pkl")
    assert "removed 1 entry" in jangdok(env, "prune").stdout
    everything = as_json(jangdok(env, "prune", "--older-than", "0s", "--json"))
    assert len(everything["removed"]) == 3 and list(filled.keys()) == []
    bad = jangdok(env, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


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


def _grpc_sockets(pid: str) -> list[Path]:
    """The gRPC socket files of a running ``weed server``, from the ports on its command line."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    sockets = []
    for argument in arguments:
        option, _, value = argument.lstrip("-").partition("=")
        service, _, rest = option.partition(".")
        if rest == "port.grpc":
            sockets.append(grpc_socket_path(service, int(value)))
    return sockets


def test_server_starts_prints_exports_and_stops_leaving_nothing(tmp_path: Path) -> None:
    plain = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CACHE_"))}
    workdir = tmp_path / "weed"
    server = subprocess.Popen([sys.executable, "-m", "jangdok", "server", "--dir", str(workdir)],
                              env=plain, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        exports = {}
        while len(exports) < 5:
            line = server.stdout.readline()
            assert line, server.stderr.read()
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        user = {**plain, **exports, "AWS_EC2_METADATA_DISABLED": "true"}
        assert jangdok(user, "doctor").returncode == 0
        Cache(exports["CACHE_DIR"], endpoint_url=exports["AWS_ENDPOINT_URL"], fallback=False,
              access_key_id=exports["AWS_ACCESS_KEY_ID"], secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
              region="us-east-1").put("hello.pkl", "world")
        assert [row["key"] for row in as_json(jangdok(user, "ls", "--json"))] == ["hello.pkl"]
        [weed] = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        sockets = _grpc_sockets(weed)
        assert len(sockets) == 4 and all(path.exists() for path in sockets)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0
    assert not Path(f"/proc/{weed}").exists()
    assert [path for path in sockets if path.exists()] == []
    assert list(workdir.glob("*.sock")) == []


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
