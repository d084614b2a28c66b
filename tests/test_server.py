"""jangdok.server: the SeaweedFS runner starts on loopback, serves objects, and stops cleanly
(process gone, no socket files left in its folder or in /tmp)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jangdok.server import READ_ONLY, start_seaweed


def _ports(args: list[str]) -> set[str]:
    found = (re.fullmatch(r"-[\w.]*port[\w.]*=(\d+)", arg) for arg in args)
    return {match.group(1) for match in found if match and match.group(1) != "0"}  # 0: disabled


def _sockets_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if stat.S_ISSOCK(path.lstat().st_mode)]


def _leftovers_in_tmp(before: set[str], pid: int, ports: set[str]) -> list[str]:
    """Files new in /tmp named after the server's process or one of its ports (gRPC sockets, glog
    files). Only new ones: other runs' stale files may carry any number."""
    return sorted(name for name in set(os.listdir("/tmp")) - before
                  if str(pid) in re.findall(r"\d+", name) or ports & set(re.findall(r"\d+", name)))


def test_start_serve_stop_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "weed"
    in_tmp = set(os.listdir("/tmp"))
    server = start_seaweed(workdir)
    pid, ports = server.pid, _ports(server.process.args)
    try:
        assert server.endpoint.startswith("http://127.0.0.1:")
        assert "-ip.bind=127.0.0.1" in server.process.args
        client = server.client()
        client.create_bucket(Bucket="served")
        client.put_object(Bucket="served", Key="a/b.bin", Body=b"\x00jangdok" * 1000)
        assert client.get_object(Bucket="served", Key="a/b.bin")["Body"].read() == b"\x00jangdok" * 1000
        with pytest.raises(Exception, match="AccessDenied|Access Denied"):
            server.client(READ_ONLY).put_object(Bucket="served", Key="c", Body=b"no")
        assert server.client(READ_ONLY).get_object(Bucket="served", Key="a/b.bin")["Body"].read()
        assert _sockets_under(workdir), "the filer and S3 local sockets belong in the workdir"
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert server.process.returncode is not None
    assert _sockets_under(workdir) == []
    assert all(not path.exists() for path in server.sockets)
    assert _leftovers_in_tmp(in_tmp, pid, ports) == []
    server.stop()  # a second stop is harmless


_STARTER = """
import sys
from pathlib import Path
from jangdok.server import launch_seaweed
server = launch_seaweed(Path(sys.argv[1]))
print(server.pid, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a parent-death signal is Linux's")
def test_a_starter_killed_with_sigkill_takes_its_server_with_it(tmp_path: Path) -> None:
    """A test run or benchmark killed at any instant (pytest-timeout, the OOM killer, kill -9)
    leaves no server behind, although the server runs in a session of its own."""
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path / "weed")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    weed = int(starter.stdout.readline())
    try:
        os.kill(weed, 0)  # running
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(weed, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        pytest.fail(f"weed {weed} outlived its starter")
    finally:
        try:
            os.killpg(weed, signal.SIGKILL)
        except ProcessLookupError:
            pass
