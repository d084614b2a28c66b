"""Shared fixtures: an isolated environment for every test, and a real SeaweedFS S3 server.

The server is started once per pytest worker (so parallel workers each run their own, on
their own free ports) and every test gets a fresh key prefix in one bucket.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Test helpers, and the golden-file script (tests/data) whose constants the tests compare to.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "data")]

from faultproxy import FaultProxy  # noqa: E402
from helpers import BUCKET, s3_settings  # noqa: E402
from motoserver import start_moto  # noqa: E402
from seaweed import SeaweedServer, credentials_env, start_seaweed  # noqa: E402

import jangdok.paths  # noqa: E402
from jangdok import Cache, Settings, parse_location  # noqa: E402
from jangdok.stores import Store, open_store  # noqa: E402

_ISOLATED_PREFIXES = ("AWS_", "JANGDOK_", "CACHE_LOCAL_")


def pytest_configure(config: pytest.Config) -> None:
    # An xdist worker runs execnet's receiver thread, so Python 3.12+ warns at every fork the
    # process tests make. That thread is the harness's, not jangdok's: run with -n 0 and the
    # warning still shows if jangdok ever leaves a thread running where a user may fork.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        config.addinivalue_line(
            "filterwarnings",
            r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning")

_ISOLATED_NAMES = ("CACHE_DIR", "S3_BUCKET_NAME", "DASK_SCHEDULER_ADDRESS")  # main.py would use a developer's cluster


@pytest.fixture
def ctrl_c_handled() -> Iterator[None]:
    """Python's own Ctrl-C handler in this process, and so the default in the children it starts,
    whatever pytest was started with: a background job without job control, or nohup, starts
    with SIGINT ignored, which jangdok's programs then rightly keep ignoring."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the developer's AWS setup, .env files or caches, or touches IMDS."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES) or name in _ISOLATED_NAMES:
            monkeypatch.delenv(name)
    aws_home = tmp_path / "aws-home"
    aws_home.mkdir()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_home / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_home / "credentials"))
    # boto3's chain would otherwise ask the EC2 metadata service, a non-loopback address.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("JANGDOK_FALLBACK_DIR", str(tmp_path / "fallback"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # The path-level functions keep one cache per root, and the settings they were resolved
    # with, for the process's life; each test configures its own environment, so each starts
    # without them.
    monkeypatch.setattr(jangdok.paths, "_caches", {})
    monkeypatch.setattr(jangdok.paths, "_settings", None)
    return work


def _serving_the_bucket(server: SeaweedServer) -> Iterator[SeaweedServer]:
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    yield from _serving_the_bucket(start_seaweed(tmp_path_factory.mktemp("seaweed")))


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """moto's S3 server, a second implementation, with the same bucket as ``seaweed``."""
    yield from _serving_the_bucket(start_moto(tmp_path_factory.mktemp("moto")))


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    """A fault-injecting, request-recording TCP proxy in front of the SeaweedFS server."""
    running = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    yield running
    running.close()


@pytest.fixture
def shaped_link(seaweed: SeaweedServer) -> Iterator[Callable[..., Any]]:
    """Makes shaped links in front of the SeaweedFS server: ``shaped_link(rtt=..., per_connection=...,
    total=...)`` (seconds, bytes per second, ``None`` for no limit; the defaults stand for in-region
    S3) returns a :class:`jangdok.bench.link.Link`; every link made is closed after the test."""
    from jangdok.bench.link import Link

    made: list[Link] = []

    def make(**shape: Any) -> Link:
        made.append(Link(seaweed.endpoint, **shape))
        return made[-1]

    yield make
    for link in made:
        link.close()


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix, so tests sharing the bucket never see each other's entries."""
    return f"t-{uuid.uuid4().hex[:12]}/cache/"


@pytest.fixture
def s3_url(s3_prefix: str) -> str:
    return f"s3://{BUCKET}/{s3_prefix}"


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cache_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A location on the parametrised backend: a temp folder or a fresh S3 prefix."""
    if backend == "local":
        return str(tmp_path / "cache")
    request.getfixturevalue("seaweed")
    return request.getfixturevalue("s3_url")


@pytest.fixture
def backend_env(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment under which the path-level functions reach the parametrised backend."""
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")
    if backend == "s3":
        for name, value in credentials_env(request.getfixturevalue("seaweed")).items():
            monkeypatch.setenv(name, value)


@pytest.fixture
def make_settings(backend: str, request: pytest.FixtureRequest) -> Any:
    """Build Settings for a location on the parametrised backend."""

    def build(url: str, **overrides: Any) -> Settings:
        if backend == "local":
            return Settings(cache_dir=url, fallback=False, **overrides)
        return s3_settings(request.getfixturevalue("seaweed"), url, **overrides)

    return build


@pytest.fixture
def store(cache_url: str, make_settings: Any) -> Iterator[Store]:
    opened = open_store(parse_location(cache_url), make_settings(cache_url))
    yield opened
    opened.close()


@pytest.fixture
def cache(cache_url: str, make_settings: Any) -> Iterator[Cache]:
    with Cache.from_settings(make_settings(cache_url)) as opened:
        yield opened
