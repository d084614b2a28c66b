"""The cache's self-test: configuration, paths, a local round trip, and on S3 each permission.

One implementation behind ``python test_s3_cache.py`` and ``jangdok doctor``: :func:`run_checks`
yields each finding as it is made, and the apps print them their own way (this module never
prints). The S3 checks list, write, inspect, read and delete a probe object under the cache
location (or the bucket named by ``S3_BUCKET_NAME`` when the cache is a local folder), so each
missing permission is named by the step that needs it.

A check creates nothing it was not asked to: the S3 write probe runs only once a listing has
shown the bucket exists, or was refused for lack of s3:ListBucket (SeaweedFS creates a missing
bucket on the first PUT of an admin identity, and an admin is never refused a listing; AWS
never creates one on PUT). No request can make a PUT conditional on its bucket existing, so
the order of the checks is the defence. A local cache folder that does not exist yet is not created: the
round trip runs in a temporary folder beside where it would be. Each failure's advice names
the setting at fault, decided from the error's kind and the server's error code.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .cache import Cache
from .errors import (
    AccessDenied,
    ConfigError,
    CredentialsError,
    JangdokError,
    NoCredentials,
    StoreUnavailable,
)
from .location import Location, is_s3_path, join, parse_location
from .settings import Settings, environment_variables

__all__ = ["Finding", "run_checks", "server_code"]

_KO_CREDENTIALS = "자격증명을 확인하세요"
_TOKEN_CODES = ("InvalidToken", "ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired")


@dataclass(frozen=True)
class Finding:
    """One line of the self-test."""

    status: Literal["ok", "note", "fail", "info"]
    message: str
    error: str | None = None
    """The error that made a check fail, as one line."""
    fix: str | None = None
    """What to do about it."""


def server_code(error: BaseException) -> str | None:
    """The S3 server's error code behind a jangdok error (``InvalidAccessKeyId``,
    ``NoSuchBucket``, ...), from the client error it was raised from; ``None`` if there is none."""
    cause = error.__cause__
    while cause is not None:
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code") or None
        cause = cause.__cause__
    return None


@dataclass(frozen=True)
class _Context:
    """What the advice needs to name the setting at fault."""

    settings: Settings
    bucket_setting: str = "CACHE_DIR"
    """The variable that named the S3 location checked: ``CACHE_DIR`` or ``S3_BUCKET_NAME``."""
    identity: str = "the access key"
    """The masked access key requests are signed with, once the client is made."""

    def where(self, name: str) -> str:
        return self.settings.sources.get(name, "default")

    def credentials(self) -> str:
        """Where the credentials come from, as the user set them."""
        settings = self.settings
        origin = settings.sources.get("credentials", "the arguments")
        if settings.access_key_id or settings.secret_access_key:
            return origin
        if settings.profile:
            return f"AWS profile {settings.profile!r} (in the AWS shared credentials file)"
        return "boto3's default chain (the AWS shared credentials file, or the instance's role)"


def _advice(error: JangdokError, context: _Context) -> str | None:
    """What to do about a failed check, naming the setting at fault; ``None`` when the error's
    own message already says all there is (a clock to set right, say)."""
    code = server_code(error)
    settings = context.settings
    endpoint = settings.endpoint_url
    server = f"the server at {endpoint}" if endpoint else "AWS"
    if isinstance(error, NoCredentials):
        return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment or .env), or run aws configure; "
                "자격증명을 설정하세요")
    if code == "InvalidAccessKeyId":
        return (f"AWS_ACCESS_KEY_ID (from {context.credentials()}) is not a key {server} knows: check it"
                + (", and that AWS_ENDPOINT_URL is the server that issued it" if endpoint else "")
                + f"; {_KO_CREDENTIALS}")
    if code == "SignatureDoesNotMatch":
        return (f"AWS_SECRET_ACCESS_KEY (from {context.credentials()}) is not the secret of access key "
                f"{context.identity}: copy the secret again, whole; {_KO_CREDENTIALS}")
    if code in _TOKEN_CODES:
        return (f"AWS_SESSION_TOKEN (from {context.credentials()}) is expired or invalid: get new temporary "
                f"credentials and set the token with its keys; {_KO_CREDENTIALS}")
    if isinstance(error, CredentialsError):
        return f"check the access key and secret from {context.credentials()}; {_KO_CREDENTIALS}"
    if isinstance(error, AccessDenied):
        return ("the bucket policy must allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
                "on the cache prefix; 버킷 정책의 권한을 확인하세요")
    if isinstance(error, StoreUnavailable):
        if endpoint:
            return (f"check the network and AWS_ENDPOINT_URL ({endpoint}, from {context.where('endpoint_url')}), "
                    "or use a local cache (CACHE_DIR=cache); 네트워크 연결을 확인하세요")
        return "check the network (and any proxy), or use a local cache (CACHE_DIR=cache); 네트워크 연결을 확인하세요"
    if code == "NoSuchBucket":
        name = context.bucket_setting
        value = settings.cache_dir if name == "CACHE_DIR" else settings.bucket
        source = context.where("cache_dir" if name == "CACHE_DIR" else "bucket")
        return (f"fix {name} ({value}, from {source}) if the bucket name is mistyped"
                + (", or AWS_ENDPOINT_URL if the bucket is on another server" if endpoint else "")
                + "; or create the bucket")
    named = [name for name in environment_variables() if re.search(rf"\b{name}\b", str(error))]
    if named:
        return f"fix {', '.join(named)} (named above)"
    return None


def _failed(message: str, error: JangdokError | None = None, context: _Context | None = None) -> Finding:
    fix = _advice(error, context) if error is not None and context is not None else None
    return Finding("fail", message, None if error is None else str(error), fix)


class _Steps:
    """Runs checks, turning each result or error into a finding."""

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.findings: list[Finding] = []
        self.error: JangdokError | None = None
        """The error of the last step that raised one."""

    def step(self, what: str, action: Callable[[], Any], failing: str | None = None) -> Any:
        """Run one check; its result, or None when it failed (raised, or answered None/False:
        the probe it looked for was not there). ``what`` says what passing showed; ``failing``,
        where that claims more than a failure shows, names the check instead."""
        try:
            result = action()
        except JangdokError as exc:
            self.error = exc
            self.findings.append(_failed(failing or what, exc, self.context))
            return None
        if result is None or result is False:
            self.findings.append(_failed(f"{what}: the probe object was not found"))
            return None
        self.findings.append(Finding("ok", what))
        return result

    def drain(self) -> Iterator[Finding]:
        found, self.findings = self.findings, []
        yield from found


def _paths(location: Location) -> Finding:
    """How an entry's path is made from CACHE_DIR: the same rules the cache uses."""
    joined = join(location.url, "label_data.pkl")
    kind = "an S3 location" if location.is_s3 else "a local folder"
    if is_s3_path(joined) == location.is_s3 and joined.endswith("/label_data.pkl"):
        return Finding("ok", f"path detection and joining: {kind}, entries such as {joined}")
    return _failed(f"path detection and joining gave {joined!r} for {kind}")


def _nearest_existing(folder: str) -> str:
    path = os.path.abspath(folder)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _local(steps: _Steps, folder: str) -> Iterator[Finding]:
    if os.path.isdir(folder):
        yield from _round_trip(steps, folder)
        return
    # Checking must not create the folder (a mistyped CACHE_DIR would then exist): a temporary
    # folder beside it shows whether the first write could.
    parent = _nearest_existing(folder)
    yield Finding("info", f"the local cache folder {folder} does not exist yet: the first write creates it "
                          f"(checking in {parent} instead)")
    try:
        scratch = tempfile.TemporaryDirectory(prefix=".jangdok-selftest-", dir=parent)
    except OSError as exc:
        yield Finding("fail", f"local cache folder {folder} cannot be created", f"{parent}: {exc.strerror or exc}",
                      f"fix CACHE_DIR (from {steps.context.where('cache_dir')}) or the permissions of {parent}")
        return
    with scratch:
        yield from _round_trip(steps, scratch.name)


def _round_trip(steps: _Steps, folder: str) -> Iterator[Finding]:
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
                       lambda: S3Store(location, settings), failing="S3 client initialization")
    yield from steps.drain()
    if store is None:
        return
    steps.context = dataclasses.replace(steps.context, identity=store.identity)
    try:
        yield from _s3_permissions(steps, store, location)
    finally:
        store.close()


def _s3_permissions(steps: _Steps, store: Any, location: Location) -> Iterator[Finding]:
    yield Finding("info", f"signing as access key {store.identity}")
    key = f"jangdok-selftest-{secrets.token_hex(4)}.probe"
    path = store.path(key)
    payload = b"jangdok self-test probe"
    # One listing tells a missing bucket, refused credentials, an unreachable server and a web
    # page from an S3 answer (and passes when only s3:ListBucket is refused: that is said next).
    # After any of those a write would fail the same way, or (SeaweedFS, for a missing bucket)
    # create the bucket: none is tried.
    reached = steps.step(f"S3 answers at {location.url}: bucket found, credentials accepted",
                         lambda: store.check() or True, failing=f"S3 check of {location.url}")
    if reached is not None:
        steps.step(f"list (s3:ListBucket) {location.url}", lambda: list(itertools.islice(store.list(), 1)))
    yield from steps.drain()
    if reached is None:
        yield Finding("note", "list, put, head, get and delete skipped: the bucket must be found first")
        return
    written = steps.step(f"put (s3:PutObject) {path}", lambda: store.write(key, payload) or path)
    yield from steps.drain()
    if written is None:
        yield Finding("note", "head, get and delete skipped: the probe object could not be written")
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


def run_checks(**overrides: Any) -> Iterator[Finding]:
    """The self-test's findings, in order, as each check completes. ``overrides`` are settings
    (``cache_dir=...``) taking precedence over the environment and ``.env`` files."""
    try:
        settings = Settings.resolve(**{"fallback": False, **overrides})
    except ConfigError as exc:
        yield _failed("configuration", exc, _Context(Settings()))
        return
    yield Finding("info", f"CACHE_DIR: {settings.cache_dir} (from {settings.sources.get('cache_dir', 'default')})")
    try:
        location = parse_location(settings.cache_dir)
    except ConfigError as exc:
        yield Finding("fail", "CACHE_DIR is not a valid location", str(exc),
                      f"fix CACHE_DIR (from {settings.sources.get('cache_dir', 'default')})")
        return
    yield _paths(location)
    if location.is_s3:
        s3_url: str | None = location.url
    elif settings.bucket:
        s3_url = f"s3://{settings.bucket}/"
    else:
        s3_url = None
    steps = _Steps(_Context(settings, "CACHE_DIR" if location.is_s3 else "S3_BUCKET_NAME"))
    if location.is_s3:
        with tempfile.TemporaryDirectory() as scratch:
            yield from _round_trip(steps, scratch)
    else:
        yield from _local(steps, settings.cache_dir)
    if s3_url is None:
        yield Finding("note", "S3 is not configured (CACHE_DIR is a local folder and S3_BUCKET_NAME is unset): "
                              "only the local cache was checked")
    else:
        yield from _s3(steps, settings, s3_url)
