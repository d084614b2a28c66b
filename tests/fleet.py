"""Machines of a fleet, played by processes running tests/compute_worker.py.

Each worker calls ``get_or_compute`` once with the cache its environment configures and logs
each computation to a shared file, so a test counts computations across processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import s3_settings
from seaweed import SeaweedServer, credentials_env

from jangdok import Cache

WORKER = str(Path(__file__).parent / "compute_worker.py")


def fleet_env(seaweed: SeaweedServer | None, cache_dir: str, **extra: str) -> dict[str, str]:
    """The environment of one machine: this cache, no fallback, nothing inherited from ours."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update({"CACHE_DIR": cache_dir, "JANGDOK_FALLBACK": "0", "AWS_EC2_METADATA_DISABLED": "true",
                "PYTHONPATH": os.pathsep.join(sys.path)})
    if seaweed is not None:
        env.update(credentials_env(seaweed))
    env.update(extra)
    return env


def member(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
           **settings: Any) -> tuple[dict[str, str], Cache]:
    """One machine of a fleet on the backend: the environment for a worker, and a cache."""
    if backend == "s3":
        seaweed, url = request.getfixturevalue("seaweed"), request.getfixturevalue("s3_url")
        return fleet_env(seaweed, url), Cache.from_settings(s3_settings(seaweed, url, **settings))
    url = str(tmp_path / "cache")
    return fleet_env(None, url), Cache(url, fallback=False, **settings)


def start(env: dict[str, str], key: str, log: Path, seconds: float, *mode: str) -> subprocess.Popen[str]:
    """A worker computing ``key`` for ``seconds`` (``"hang"``: forever, until killed)."""
    return subprocess.Popen([sys.executable, WORKER, key, str(log), str(seconds), *mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(workers: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """What each worker printed (its value and statistics), after checking it succeeded."""
    found = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        found.append(json.loads(out))
    return found


def wait_for(path: Path, timeout: float = 60) -> None:
    """Until a worker has written its first line to ``path`` (it is computing)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def computations(log: Path) -> list[str]:
    """The process ids that computed, one per computation."""
    return log.read_text().split() if log.exists() else []
