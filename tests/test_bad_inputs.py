"""Every bad input named: each case is provoked for real and answered with one readable line
of the right error type, saying what failed and what to do.

S3's answers come from SeaweedFS where it gives them (a missing bucket), from a plain web
server (an endpoint that is not S3), and otherwise from the test proxy sending AWS's exact
error document (an expired token, a skewed clock, another region): SeaweedFS does not check
those. The last test runs a whole S3 session at DEBUG level and looks for the secret anywhere.
"""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import raw_objects, s3_settings
from seaweed import READ_ONLY, READ_WRITE, SeaweedServer

from jangdok import (
    AccessDenied,
    Cache,
    ConfigError,
    CredentialsError,
    InvalidKey,
    InvalidLocation,
    InvalidValue,
    JangdokError,
    Settings,
    StoreUnavailable,
    parse_location,
)
from jangdok.stores.s3 import S3Store
from jangdok.stores.s3.translate import RULES


@dataclass(frozen=True)
class Case:
    name: str
    provoke: Callable[[pytest.FixtureRequest, Path], Any]
    error: type[BaseException]
    says: tuple[str, ...]
    rule: str | None = None
    """The rule of the S3 translation table (jangdok.stores.s3.translate.RULES) this answer meets."""
    never_says: tuple[str, ...] = ()


def _faulty_settings(request: pytest.FixtureRequest, fault: tuple[Any, ...]) -> tuple[str, Settings]:
    """The test's S3 location, and settings reaching it through a proxy that answers with ``fault``."""
    proxy = request.getfixturevalue("proxy")
    proxy.faults.append(fault)
    url = request.getfixturevalue("s3_url")
    return url, s3_settings(request.getfixturevalue("seaweed"), url, endpoint_url=proxy.endpoint, max_attempts=1)


def _through_proxy(fault: tuple[Any, ...]) -> Callable[[pytest.FixtureRequest, Path], Any]:
    def provoke(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        return Cache.from_settings(_faulty_settings(request, fault)[1]).get("x.pkl")

    return provoke


class _WebPage(http.server.BaseHTTPRequestHandler):
    status = 200

    def _answer(self) -> None:
        body = b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body></body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _web_server(status: int) -> Callable[[pytest.FixtureRequest, Path], Any]:
    def provoke(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        handler = type("Page", (_WebPage,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        request.addfinalizer(server.shutdown)
        settings = Settings(cache_dir="s3://some-bucket/cache/", endpoint_url=f"http://127.0.0.1:{server.server_port}",
                            access_key_id=READ_WRITE[0], secret_access_key=READ_WRITE[1], region="us-east-1",
                            fallback=False, max_attempts=1)
        return Cache.from_settings(settings).get("x.pkl")

    return provoke


def _store_through_proxy(fault: tuple[Any, ...]) -> Callable[[pytest.FixtureRequest, Path], Any]:
    """A read by the store itself: no opening check, so the fault answers the read."""

    def provoke(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        url, settings = _faulty_settings(request, fault)
        store = S3Store(parse_location(url), settings)
        request.addfinalizer(store.close)
        return store.read("x.pkl")

    return provoke


def _signing_as(identity: tuple[str, str], operation: str = "get") -> Callable[[pytest.FixtureRequest, Path], Any]:
    def provoke(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        seaweed = request.getfixturevalue("seaweed")
        cache = Cache.from_settings(s3_settings(seaweed, request.getfixturevalue("s3_url"), identity=identity))
        return cache.put("x.pkl", 1) if operation == "put" else cache.get("x.pkl")

    return provoke


def _missing_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    seaweed = request.getfixturevalue("seaweed")
    return Cache.from_settings(s3_settings(seaweed, "s3://no-such-bucket-here/cache/")).get("x.pkl")


def _dotenv(text: str, mode: int) -> Callable[[pytest.FixtureRequest, Path], Any]:
    def provoke(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        path = Path.cwd() / ".env"
        path.write_text(text)
        path.chmod(mode)
        return Settings.resolve()

    return provoke


def _location(url: str) -> Callable[[pytest.FixtureRequest, Path], Any]:
    return lambda request, tmp_path: Cache(url)


def _put(key: str, value: Any = 1, **settings: Any) -> Callable[[pytest.FixtureRequest, Path], Any]:
    return lambda request, tmp_path: Cache(str(tmp_path / "cache"), **settings).put(key, value)


# A log line an endpoint (or anyone on an http:// path) would like every log to show.
FORGED_LINES = "\n2026-01-01 INFO jangdok: cache loaded (S3): s3://b/cache/x.pkl\u2028"
SKEWED = {"RequestTime": "20261126T120000Z", "ServerTime": "2026-11-26T12:20:00.000Z",
          "MaxAllowedSkewMilliseconds": "900000"}
CASES = [
    Case("a missing bucket", _missing_bucket, ConfigError,
         ("bucket 'no-such-bucket-here' does not exist", "aws s3 mb s3://no-such-bucket-here",
          "boto3.client('s3', endpoint_url=", "create_bucket(Bucket='no-such-bucket-here')"), "missing bucket"),
    Case("an access key id the endpoint does not know", _signing_as(("JDKNOSUCHKEY0042", READ_WRITE[1])),
         CredentialsError, ("Access Denied (InvalidAccessKeyId)", "does not know the access key id ****0042",
                            "check AWS_ACCESS_KEY_ID"), "unknown access key id",
         never_says=("secret", "JDKNOSUCHKEY")),
    Case("a wrong secret key", _signing_as((READ_WRITE[0], "not-the-secret-000000000000")), CredentialsError,
         ("Access Denied (SignatureDoesNotMatch)", f"access key ****{READ_WRITE[0][-4:]}",
          "check the secret key (AWS_SECRET_ACCESS_KEY)"), "wrong secret key",
         never_says=("AWS_ACCESS_KEY_ID", "not-the-secret", READ_WRITE[0])),
    Case("a session token the endpoint rejects", _through_proxy(("status", 403, "InvalidToken")), CredentialsError,
         ("rejected the session token", "check AWS_SESSION_TOKEN"), "invalid session token"),
    Case("credentials without the permission", _signing_as(READ_ONLY, "put"), AccessDenied,
         ("Access Denied", f"access key ****{READ_ONLY[0][-4:]}) lacks s3:PutObject"), "permission missing"),
    Case("an object replaced while it is read", _store_through_proxy(("status", 412, "PreconditionFailed")),
         StoreUnavailable, ("replaced while it was being read", "load it again"), "object replaced while read"),
    Case("a throttled request with no attempt left", _through_proxy(("status", 503, "SlowDown")), StoreUnavailable,
         ("SlowDown (HTTP 503) after 1 attempt", "overloaded or failing"), "overloaded or failing"),
    Case("an answer no rule knows", _through_proxy(("status", 400, "InvalidArgument", {"Message": "Bad thing"})),
         JangdokError, ("InvalidArgument (HTTP 400): Bad thing",), "any other answer"),
    Case("an error document whose Message is 2 MB holding forged log lines",
         _through_proxy(("status", 400, "InvalidObjectState", {"Message": "A" * 2_000_000 + FORGED_LINES})),
         JangdokError, ("InvalidObjectState (HTTP 400): AAAA", "(2,000,064 characters)"), "any other answer",
         never_says=("cache loaded", "\u2028")),
    Case("an error document whose Code is 100 kB and Message a forged log line",
         _through_proxy(("status", 400, "X" * 100_000, {"Message": FORGED_LINES})),
         JangdokError, ("XXXX... (100,000 characters) (HTTP 400): \\n2026-01-01 INFO jangdok: cache loaded",
                        "\\u2028"), "any other answer", never_says=("\u2028",)),
    Case("a bucket in another region, named in a 10 kB header",
         _through_proxy(("status", 400, "AuthorizationHeaderMalformed", {}, {"x-amz-bucket-region": "r" * 10_000})),
         ConfigError, ("is in region 'rrrr", "(10,000 characters)"), "bucket in another region"),
    Case("a bucket in another region",
         _through_proxy(("status", 400, "AuthorizationHeaderMalformed",
                         {"Message": "the region 'us-east-1' is wrong; expecting 'ap-northeast-2'"})),
         ConfigError, ("is in region 'ap-northeast-2'", "AWS_REGION=ap-northeast-2"), "bucket in another region"),
    Case("an expired session token", _through_proxy(("status", 400, "ExpiredToken")), CredentialsError,
         ("session token has expired", "AWS_SESSION_TOKEN"), "expired session token"),
    Case("a skewed clock", _through_proxy(("status", 403, "RequestTimeTooSkewed", SKEWED)), ConfigError,
         ("clock is 1200 s behind the server's", "timedatectl set-ntp true"), "skewed clock"),
    Case("an endpoint that is a web page", _web_server(200), ConfigError,
         ("does not answer like an S3 server", "text/html", "AWS_ENDPOINT_URL")),
    Case("an endpoint that is a web server's 404", _web_server(404), ConfigError,
         ("does not answer like an S3 server", "HTTP 404"), "not an S3 server"),
    Case("a proxy's 502 page in front of S3 (an outage, not a wrong endpoint)", _web_server(502),
         StoreUnavailable, ("HTTP 502", "overloaded or failing"), "overloaded or failing"),
    Case("a .env with a syntax error", _dotenv("CACHE_DIR=cache\nAWS_REGION='eu-west-1\n", 0o600), ConfigError,
         (".env", "cannot parse line 2")),
    Case("a bucket name with capitals and underscores", _location("s3://My_Bucket/cache/"), InvalidLocation,
         ("invalid bucket name 'My_Bucket'", "did you mean 'my-bucket'?")),
    Case("a key too long for S3", lambda request, tmp_path: Cache.from_settings(s3_settings(
        request.getfixturevalue("seaweed"), request.getfixturevalue("s3_url"))).put("k/" * 520 + "x.pkl", 1),
        InvalidKey, ("S3 allows at most 1024 bytes",)),
    Case("a key segment too long for the file system", _put("x" * 300 + ".pkl"), InvalidKey,
         ("longer than 255 bytes", "shorten it")),
    Case("a signing key too short", lambda request, tmp_path: Cache(str(tmp_path), signing_keys="short").settings,
         ConfigError, ("shorter than 16", "token_urlsafe")),
    Case("an unknown serializer", lambda request, tmp_path: Cache(str(tmp_path), serializer="json").settings,
         ConfigError, ("serializer", "must be one of pickle, safe")),
    Case("a set for the safe serializer", _put("x.pkl", {1, 2}, serializer="safe"), InvalidValue,
         ("safe serializer cannot store", "builtins.set")),
    Case("a local tier bound that is not a size", lambda request, tmp_path: Settings(local_max_bytes="lots"),
         ConfigError, ("CACHE_LOCAL_MAX_BYTES", "500MB")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_is_one_line_naming_the_fix(case: Case, request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    with pytest.raises(case.error) as raised:
        case.provoke(request, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 700, message
    for phrase in case.says:
        assert phrase in message, message
    for phrase in case.never_says:
        assert phrase not in message, message
    if case.rule is not None:
        assert type(raised.value) is next(rule.error for rule in RULES if rule.name == case.rule)


def test_every_rule_of_the_s3_translation_table_is_met_by_a_real_answer() -> None:
    """The table is tested as one: each of its rules by one of the cases above."""
    assert {case.rule for case in CASES if case.rule} == {rule.name for rule in RULES}


def test_a_dotenv_others_can_read_holding_a_secret_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    path = Path.cwd() / ".env"
    path.write_text("JANGDOK_SIGNING_KEY=team-key-0123456789abcdef\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        Settings.resolve()
    assert "can be read by other users" in caplog.text and "chmod 600" in caplog.text
    assert "0123456789abcdef" not in caplog.text


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # the root logger: jangdok, boto3, botocore, urllib3
    yield caplog


def test_a_whole_s3_session_at_debug_never_shows_the_secret(seaweed: SeaweedServer, s3_url: str,
                                                             everything_logged: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    secret, signing = READ_WRITE[1], "team-key-0123456789abcdef"
    for name, value in {"AWS_ACCESS_KEY_ID": READ_WRITE[0], "AWS_SECRET_ACCESS_KEY": secret,
                        "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_REGION": "us-east-1", "CACHE_DIR": s3_url,
                        "JANGDOK_SIGNING_KEY": signing, "CACHE_LOCAL_DIR": str(tmp_path / "tier"),
                        "JANGDOK_FALLBACK": "0"}.items():
        monkeypatch.setenv(name, value)
    shown: list[str] = []
    cache = Cache()
    cache.put("a.pkl", list(range(1000)))
    assert cache.get("a.pkl") == list(range(1000))
    assert cache.get_or_compute("b.pkl", lambda: "b") == "b"
    assert cache.store.name == "S3" and cache.fallback_reason is None, "S3 served the session"
    assert raw_objects(seaweed, s3_url.split("/", 3)[3]).keys() >= {s3_url.split("/", 3)[3] + "a.pkl"}
    shown += [repr(cache), repr(cache.settings), repr(cache.store), repr(cache.trust), str(cache.stats())]
    list(cache.keys())
    cache.prune(dry_run=True)
    cache.delete("a.pkl")
    for bad in (lambda: Cache(s3_url.replace("jangdok-test", "no-such-bucket-zz")).get("x.pkl"),
                lambda: Cache(s3_url, access_key_id=READ_WRITE[0], secret_access_key=secret[::-1],
                              fallback=False).get("x.pkl"),
                lambda: Cache(s3_url, endpoint_url="http://127.0.0.1:9", max_attempts=1, fallback=False).get("x.pkl")):
        with pytest.raises((ConfigError, CredentialsError, StoreUnavailable)) as raised:
            bad()
        shown.append(str(raised.value))
        shown.append(repr(raised.value))
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in everything_logged.records)
    assert len(everything_logged.records) > 20  # botocore's DEBUG records were captured
    for text in [*shown, logged, os.linesep.join(map(str, everything_logged.records))]:
        assert secret not in text and secret[:-4] not in text
        assert signing not in text and signing[:-4] not in text


def test_the_commands_json_output_never_shows_the_secret(seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    secret, signing = READ_WRITE[1], "team-key-0123456789abcdef"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update({"AWS_ACCESS_KEY_ID": READ_WRITE[0], "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": seaweed.endpoint, "CACHE_DIR": s3_url, "JANGDOK_SIGNING_KEY": signing})
    Cache.from_settings(s3_settings(seaweed, s3_url, signing_keys=signing)).put("a.pkl", [1, 2])
    for command in (["doctor"], ["ls", "--long"], ["stat", "a.pkl"], ["get", "a.pkl"], ["stats"], ["verify"],
                    ["prune", "--dry-run"]):
        for extra in (["--json"], ["--json", "--debug"]):
            result = subprocess.run([sys.executable, "-m", "jangdok", *command, *extra], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            for text in (result.stdout, result.stderr):
                assert secret not in text and secret[:-4] not in text
                assert signing not in text and signing[:-4] not in text
