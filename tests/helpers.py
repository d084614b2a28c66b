"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from seaweed import READ_WRITE, SeaweedServer

from jangdok import Settings

BUCKET = "jangdok-test"


def s3_settings(server: SeaweedServer, url: str, identity: tuple[str, str] = READ_WRITE, **overrides: Any) -> Settings:
    """Settings for ``url`` on the test server, with timeouts short enough for tests."""
    values: dict[str, Any] = dict(
        cache_dir=url, endpoint_url=server.endpoint, region="us-east-1",
        access_key_id=identity[0], secret_access_key=identity[1],
        connect_timeout=2.0, read_timeout=10.0, total_timeout=30.0, fallback=False,
    )
    values.update(overrides)
    return Settings(**values)


def raw_objects(server: SeaweedServer, prefix: str) -> dict[str, bytes]:
    """What any S3 tool would see under a prefix, read around jangdok."""
    client = server.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listing}



def open_fifo_writer(fifo: Path, process: subprocess.Popen[str]) -> int | None:
    """Open a FIFO as its writer once a process has it open to read (``process`` or a child of
    it); ``None`` if ``process`` exits first."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if process.poll() is not None:
            return None
        time.sleep(0.01)
