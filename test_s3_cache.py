"""Credential and permission self-test for the cache: run it before ``python main.py``.

    python test_s3_cache.py

Shows where the configuration and credentials come from (keys masked), checks path handling
and a local round trip, and on S3 lists, writes, inspects, reads and deletes a probe object
under CACHE_DIR (or the bucket in S3_BUCKET_NAME). Each step prints ✅, ⚠️ or ❌ with the fix.
Exit status 0 when every configured store works, 1 otherwise.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from jangdok import (
    AccessDenied,
    Cache,
    ConfigError,
    CredentialsError,
    JangdokError,
    Settings,
    StoreUnavailable,
    is_s3_path,
    join,
    parse_location,
)

FIXES: list[tuple[type[JangdokError], str]] = [
    (CredentialsError, "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (environment or .env) or the AWS "
                       "profile (aws configure --profile NAME); 자격증명을 확인하세요"),
    (AccessDenied, "the bucket policy must allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
                   "on the cache prefix; 버킷 정책의 권한을 확인하세요"),
    (StoreUnavailable, "check the network and the endpoint (AWS_ENDPOINT_URL), or use the local cache "
                       "(CACHE_DIR=cache); 네트워크 연결을 확인하세요"),
    (ConfigError, "fix the setting named above (CACHE_DIR, S3_BUCKET_NAME, AWS_PROFILE)"),
]


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, message: str) -> None:
        print(f"✅ {message}")

    def note(self, message: str) -> None:
        print(f"⚠️ {message}")

    def fail(self, message: str, error: JangdokError | None = None) -> None:
        self.failures += 1
        print(f"❌ {message}")
        if error is not None:
            print(f"   {error}")
            fix = next((text for kind, text in FIXES if isinstance(error, kind)), None)
            if fix:
                print(f"   → fix: {fix}")

    def step(self, what: str, action: Callable[[], Any]) -> Any:
        """Run one check; report it and return its result, or None when it failed (raised, or
        answered None/False: the probe it looked for was not there)."""
        try:
            result = action()
        except JangdokError as exc:
            self.fail(what, exc)
            return None
        if result is None or result is False:
            self.fail(f"{what}: the probe object was not found")
            return None
        self.ok(what)
        return result


def check_paths(report: Report) -> None:
    joined = join("s3://waterandfish-s3/cache/", "label_data.pkl")
    if is_s3_path(joined) and joined == "s3://waterandfish-s3/cache/label_data.pkl" and not is_s3_path("cache"):
        report.ok(f"path detection and joining: {joined}")
    else:
        report.fail(f"path detection and joining gave {joined!r}")


def check_local(report: Report, folder: str) -> None:
    cache = Cache(folder, fallback=False)
    key = f"jangdok-selftest-{secrets.token_hex(4)}.pkl"
    value = {"probe": key}
    if report.step(f"local cache write: {cache.store.path(key)}", lambda: cache.put(key, value)) is None:
        return
    if report.step("local cache read", lambda: cache.get(key)) not in (None, value):
        report.fail("local cache read returned a different value")
    report.step("local cache delete", lambda: cache.delete(key))


def check_s3(report: Report, settings: Settings, url: str) -> None:
    from jangdok.stores.s3 import S3Store

    location = parse_location(url)
    print(f"   S3 location: {location.url}")
    print(f"   region: {settings.region or '(boto3 default)'}; "
          f"endpoint: {settings.endpoint_url or 'AWS S3 (default endpoint)'}")
    store = report.step(f"S3 client initialization: credentials found ({settings.credentials_source})",
                        lambda: S3Store(location, settings))
    if store is None:
        return
    print(f"   signing as access key {store.identity}")
    key = f"jangdok-selftest-{secrets.token_hex(4)}.probe"
    path = store.path(key)
    payload = b"jangdok self-test probe"
    report.step(f"list (s3:ListBucket) {location.url}", lambda: list(itertools.islice(store.list(), 1)))
    if report.step(f"put (s3:PutObject) {path}", lambda: store.write(key, payload) or path) is None:
        report.note("head, get and delete skipped: the probe object could not be written")
        return
    report.step(f"head (s3:GetObject) {path}", lambda: store.stat(key))

    def read_back() -> bytes | None:
        reader = store.read(key)
        if reader is None:
            return None
        with reader:
            return reader.read()

    if report.step(f"get (s3:GetObject) {path}", read_back) not in (None, payload):
        report.fail("get returned different bytes than were put")
    report.step(f"delete (s3:DeleteObject) {path}", lambda: store.delete(key))
    store.close()


def main() -> int:
    print("jangdok cache self-test (캐시 자격증명 테스트)")
    report = Report()
    try:
        settings = Settings.resolve(fallback=False)
    except ConfigError as exc:
        report.fail("configuration", exc)
        return 1
    source = settings.sources.get("cache_dir", "default")
    print(f"   CACHE_DIR: {settings.cache_dir} (from {source})")
    check_paths(report)

    try:
        location = parse_location(settings.cache_dir)
    except ConfigError as exc:
        report.fail("CACHE_DIR is not a valid location", exc)
        return 1
    if location.is_s3:
        s3_url = location.url
    elif settings.bucket:
        s3_url = f"s3://{settings.bucket}/"
    else:
        s3_url = None

    with tempfile.TemporaryDirectory() as scratch:
        check_local(report, scratch if location.is_s3 else settings.cache_dir)

    if s3_url is None:
        report.note("S3 is not configured (CACHE_DIR is a local folder and S3_BUCKET_NAME is unset): "
                    "only the local cache was checked")
    else:
        check_s3(report, settings, s3_url)

    if report.failures:
        print(f"\n❌ {report.failures} check(s) failed")
        return 1
    print("\n✅ every configured cache store works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
