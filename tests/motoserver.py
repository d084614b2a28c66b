"""Run moto's S3 server for tests: a second S3 implementation, for AWS's error semantics.

Loopback only, a free port, stopped by PID; same shape as :mod:`seaweed`, so tests can be
parametrised over both servers.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from seaweed import SeaweedServer, free_ports

STARTUP_SECONDS = 30


def start_moto(workdir: Path) -> SeaweedServer:
    """Start ``moto_server`` on 127.0.0.1; moto accepts any credentials."""
    binary = shutil.which("moto_server")
    if not binary:
        raise RuntimeError("the 'moto_server' command is missing: pip install 'moto[server]' (in the test extra)")
    workdir.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    log = open(workdir / "weed.log", "wb")  # SeaweedServer.log_tail reads this name
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
    log.close()
    server = SeaweedServer(f"http://127.0.0.1:{port}", process, workdir)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.client().list_buckets()
            return server
        except Exception:  # not up yet
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"moto_server did not become ready in {STARTUP_SECONDS} s:\n{server.log_tail()}")
