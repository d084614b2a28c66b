"""The cache's self-test: configuration, paths, a local round trip, and on S3 each permission.

One implementation behind ``python test_s3_cache.py`` and ``jangdok doctor``: :func:`run_checks`
yields each finding as it is made, and the apps print them their own way (this module never
prints). The S3 checks list, write, inspect, read and delete a probe object under the cache
location (or the bucket named by ``S3_BUCKET_NAME`` when the cache is a local folder), so each
missing permission is named by the step that needs it.
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .cache import Cache
from .errors import AccessDenied, ConfigError, CredentialsError, JangdokError, StoreUnavailable
from .location import is_s3_path, join, parse_location
from .settings import Settings

__all__ = ["Finding", "run_checks"]

_FIXES: list[tuple[type[JangdokError], str]] = [
    (CredentialsError, "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (environment or .env) or the AWS "
                       "profile (aws configure --profile NAME); 자격증명을 확인하세요"),
    (AccessDenied, "the bucket policy must allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
                   "on the cache prefix; 버킷 정책의 권한을 확인하세요"),
    (StoreUnavailable, "check the network and the endpoint (AWS_ENDPOINT_URL), or use the local cache "
                       "(CACHE_DIR=cache); 네트워크 연결을 확인하세요"),
    (ConfigError, "fix the setting named above (CACHE_DIR, S3_BUCKET_NAME, AWS_PROFILE)"),
]


@dataclass(frozen=True)
class Finding:
    """One line of the self-test."""

    status: Literal["ok", "note", "fail", "info"]
    message: str
    error: str | None = None
    """The error that made a check fail, as one line."""
    fix: str | None = None
    """What to do about it."""


def _failed(message: str, error: JangdokError | None = None) -> Finding:
    fix = next((text for kind, text in _FIXES if isinstance(error, kind)), None) if error else None
    return Finding("fail", message, None if error is None else str(error), fix)


class _Steps:
    """Runs checks, turning each result or error into a finding."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def step(self, what: str, action: Callable[[], Any]) -> Any:
        """Run one check; its result, or None when it failed (raised, or answered None/False:
        the probe it looked for was not there)."""
        try:
            result = action()
        except JangdokError as exc:
            self.findings.append(_failed(what, exc))
            return None
        if result is None or result is False:
            self.findings.append(_failed(f"{what}: the probe object was not found"))
            return None
        self.findings.append(Finding("ok", what))
        return result

    def drain(self) -> Iterator[Finding]:
        found, self.findings = self.findings, []
        yield from found


def _paths() -> Finding:
    joined = join("s3://waterandfish-s3/cache/", "label_data.pkl")
    if is_s3_path(joined) and joined == "s3://waterandfish-s3/cache/label_data.pkl" and not is_s3_path("cache"):
        return Finding("ok", f"path detection and joining: {joined}")
    return _failed(f"path detection and joining gave {joined!r}")


def _local(steps: _Steps, folder: str) -> Iterator[Finding]:
    cache = Cache(folder, fallback=False)
    key = f"jangdok-selftest-{secrets.token_hex(4)}.pkl"
    value = {"probe": key}
    written = steps.step(f"local cache write: {cache.store.path(key)}", lambda: cache.put(key, value))
    yield from steps.drain()
    if written is None:
        return
    if steps.step("local cache read", lambda: cache.get(key)) not in (None, value):
        steps.findings.append(_failed("local cache read returned a different value"))
    steps.step("local cache delete", lambda: cache.delete(key))
    yield from steps.drain()


def _s3(steps: _Steps, settings: Settings, url: str) -> Iterator[Finding]:
    from .stores.s3 import S3Store

    location = parse_location(url)
    yield Finding("info", f"S3 location: {location.url}")
    yield Finding("info", f"region: {settings.region or '(boto3 default)'}; "
                          f"endpoint: {settings.endpoint_url or 'AWS S3 (default endpoint)'}")
    store = steps.step(f"S3 client initialization: credentials found ({settings.credentials_source})",
                       lambda: S3Store(location, settings))
    yield from steps.drain()
    if store is None:
        return
    yield Finding("info", f"signing as access key {store.identity}")
    key = f"jangdok-selftest-{secrets.token_hex(4)}.probe"
    path = store.path(key)
    payload = b"jangdok self-test probe"
    steps.step(f"list (s3:ListBucket) {location.url}", lambda: list(itertools.islice(store.list(), 1)))
    written = steps.step(f"put (s3:PutObject) {path}", lambda: store.write(key, payload) or path)
    yield from steps.drain()
    if written is None:
        yield Finding("note", "head, get and delete skipped: the probe object could not be written")
        store.close()
        return
    steps.step(f"head (s3:GetObject) {path}", lambda: store.stat(key))

    def read_back() -> bytes | None:
        reader = store.read(key)
        if reader is None:
            return None
        with reader:
            return reader.read()

    if steps.step(f"get (s3:GetObject) {path}", read_back) not in (None, payload):
        steps.findings.append(_failed("get returned different bytes than were put"))
    steps.step(f"delete (s3:DeleteObject) {path}", lambda: store.delete(key))
    yield from steps.drain()
    store.close()


def run_checks(**overrides: Any) -> Iterator[Finding]:
    """The self-test's findings, in order, as each check completes. ``overrides`` are settings
    (``cache_dir=...``) taking precedence over the environment and ``.env`` files."""
    try:
        settings = Settings.resolve(**{"fallback": False, **overrides})
    except ConfigError as exc:
        yield _failed("configuration", exc)
        return
    yield Finding("info", f"CACHE_DIR: {settings.cache_dir} (from {settings.sources.get('cache_dir', 'default')})")
    yield _paths()
    try:
        location = parse_location(settings.cache_dir)
    except ConfigError as exc:
        yield _failed("CACHE_DIR is not a valid location", exc)
        return
    if location.is_s3:
        s3_url: str | None = location.url
    elif settings.bucket:
        s3_url = f"s3://{settings.bucket}/"
    else:
        s3_url = None
    steps = _Steps()
    with tempfile.TemporaryDirectory() as scratch:
        yield from _local(steps, scratch if location.is_s3 else settings.cache_dir)
    if s3_url is None:
        yield Finding("note", "S3 is not configured (CACHE_DIR is a local folder and S3_BUCKET_NAME is unset): "
                              "only the local cache was checked")
    else:
        yield from _s3(steps, settings, s3_url)
