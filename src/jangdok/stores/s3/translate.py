"""What an S3 server's answer means: botocore's exceptions translated into :mod:`jangdok.errors`.

One table of rules (:data:`RULES`), tried in order, gives the error type and the message for
every error document or bare status a server can send; a failure below HTTP (a reset, a
timeout, a refused connection) is an outage. Each message says what failed, on which path, and
what to check, and names the access key only masked.

Whatever the server wrote (an error code, its message, a header) is quoted only through
:func:`quoted`: anyone on an ``http://`` path can write it, so it could otherwise put megabytes,
or a forged log line, into every message and log record that shows the error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import botocore.exceptions as bce
from urllib3.exceptions import HTTPError as Urllib3Error

from ...errors import (
    AccessDenied,
    ConfigError,
    CredentialsError,
    JangdokError,
    NoCredentials,
    ObjectChanged,
    StoreUnavailable,
)

__all__ = ["Answer", "Rule", "RULES", "ShortBody", "Target", "content_type", "error_code", "is_transient", "not_s3",
           "quoted", "rule_for", "translate", "MISSING_CODES"]

MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded",
})
_PERMISSION = {
    "opening": "s3:ListBucket",
    "checking": "s3:GetObject (and s3:ListBucket, without which S3 reports a missing key as 403)",
    "loading": "s3:GetObject",
    "saving": "s3:PutObject",
    "deleting": "s3:DeleteObject",
    "listing": "s3:ListBucket",
    "probing": "s3:PutObject and s3:DeleteObject",
}


# Server text quoted in one message stays within these, so the whole line stays under the 700
# characters docs/security.md promises.
_CODE_LIMIT = 64
_TEXT_LIMIT = 240


def quoted(text: object, limit: int = _TEXT_LIMIT) -> str:
    """Text a server chose, for a message or a log record: one line (every character that is
    not printable, line breaks and Unicode separators included, escaped as ``\\n``,
    ``\\u2028``), at most ``limit`` characters, and the length of the whole when cut."""
    text = str(text)
    head = text[:limit]
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in head)
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[: limit - 28]}... ({len(text):,} characters)"


def content_type(headers: Mapping[str, str]) -> str:
    """An answer's Content-Type as a message quotes it (``no`` when it has none)."""
    return quoted(headers.get("content-type") or "no", _CODE_LIMIT)


class ShortBody(Exception):
    """The connection ended before the promised Content-Length: a transfer fault, not data."""


def error_code(exc: bce.ClientError) -> tuple[str, int]:
    """The error code of an answer (its HTTP status where the answer has no document, as for
    HEAD), and its HTTP status."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", status)), int(status or 0)


def _overloaded(code: str, status: int) -> bool:
    return code in _TRANSIENT_CODES or status >= 500 or status == 429


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: throttling, a server error, or a broken connection."""
    if isinstance(exc, bce.ClientError):
        return _overloaded(*error_code(exc))
    if isinstance(exc, bce.SSLError):
        return False  # a certificate problem does not fix itself
    return isinstance(
        exc,
        (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError, bce.IncompleteReadError, Urllib3Error,
         ShortBody, ConnectionError, TimeoutError),
    )


@dataclass(frozen=True)
class Target:
    """What a message names about the store that was asked."""

    bucket: str
    endpoint: str
    region: str | None
    identity: str
    """The access key the requests are signed with, masked (``****ABCD``)."""
    credentials_source: str
    endpoint_setting: str | None
    """The endpoint as configured (``None`` for AWS), for the create-the-bucket hint."""
    session_token: bool
    """Whether a session token is sent with the keys."""

    @property
    def key_and_source(self) -> str:
        """``access key ****ABCD from environment``: the key, and where it came from, once."""
        if self.credentials_source.startswith(f"access key {self.identity}"):
            return self.credentials_source
        return f"access key {self.identity} ({self.credentials_source})"


@dataclass(frozen=True)
class Answer:
    """One error answer and the request it answered."""

    code: str
    status: int
    fields: Mapping[str, Any]
    """The error document's fields (``Code``, ``Message``, ``ServerTime``, ...)."""
    headers: Mapping[str, str]
    verb: str
    path: str
    tally: str
    """How many attempts were made in how long, for messages about giving up."""
    target: Target

    @property
    def shown_code(self) -> str:
        return quoted(self.code, _CODE_LIMIT)

    @property
    def message(self) -> str:
        """The error document's Message, as a message may quote it (see :func:`quoted`)."""
        return quoted(self.fields.get("Message", ""))

    @property
    def lead(self) -> str:
        return f"S3 error {self.verb} {self.path}"


@dataclass(frozen=True)
class Rule:
    """A kind of answer: which answers it covers, the error they become, and its message."""

    name: str
    applies: Callable[[Answer], bool]
    error: type[JangdokError]
    says: Callable[[Answer], str]


def _codes(*codes: str) -> Callable[[Answer], bool]:
    chosen = frozenset(codes)
    return lambda answer: answer.code in chosen


def _not_an_s3_document(answer: Answer) -> bool:
    # A proxy's 502/503 page in front of S3 is an outage, not a wrong endpoint.
    not_xml = not answer.fields.get("Code") or str(answer.headers.get("content-type", "")).startswith("text/html")
    return not_xml and not _overloaded("", answer.status)


def not_s3(target: Target, verb: str, path: str, answered: str) -> str:
    """The message for an endpoint that answers, but not like an S3 server."""
    return (f"S3 error {verb} {path}: the endpoint {target.endpoint} does not answer like an S3 server (it "
            f"answered {answered}); check AWS_ENDPOINT_URL: the S3 API's address and port (e.g. 8333 for "
            "SeaweedFS, 9000 for MinIO), not a web page or console")


def _expected_region(message: str) -> str | None:
    """The region AWS names in "the region 'us-east-1' is wrong; expecting 'eu-west-1'"."""
    match = re.search(r"expecting '([a-z0-9-]{1,64})'", message)
    return match.group(1) if match else None


def _skew(fields: Mapping[str, Any]) -> str:
    """How far this machine's clock is off, from the times S3 puts in its error document."""
    try:
        request = datetime.strptime(fields["RequestTime"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        server = datetime.strptime(fields["ServerTime"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except (KeyError, TypeError, ValueError):
        return "this machine's clock differs from the server's"
    offset = (request - server).total_seconds()
    return (f"this machine's clock is {abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'} the server's "
            f"(request signed at {request:%Y-%m-%d %H:%M:%S} UTC, server time {server:%H:%M:%S} UTC)")


def _wrong_region(answer: Answer) -> str:
    found = answer.headers.get("x-amz-bucket-region") or _expected_region(answer.message)
    region = quoted(found, _CODE_LIMIT) if found else None
    return (f"{answer.lead}: {answer.shown_code}: bucket {answer.target.bucket!r} is in "
            f"{'region ' + repr(region) if region else 'another region'}, not {answer.target.region!r}; "
            f"set AWS_REGION={region or '<its region>'}.")


def _expired(answer: Answer) -> str:
    return (f"{answer.lead}: {answer.shown_code}: the session token has expired ({answer.target.credentials_source}); "
            "get new temporary credentials (aws sso login, aws sts assume-role, or your identity provider) and set "
            "AWS_SESSION_TOKEN and its keys again.")


def _skewed(answer: Answer) -> str:
    return (f"{answer.lead}: RequestTimeTooSkewed: {_skew(answer.fields)}; S3 refuses requests signed more than "
            "15 minutes off. Set the clock right (enable NTP: 'timedatectl set-ntp true', or 'w32tm /resync' on "
            "Windows).")


def _denied(answer: Answer) -> str:
    # HEAD answers carry no error document, so a bare 403 may also be a bad key or secret.
    unsure = " (or the keys are wrong: HEAD responses do not say which)" if answer.code == "403" else ""
    return (f"{answer.lead}: Access Denied. The identity (access key {answer.target.identity}) lacks "
            f"{_PERMISSION[answer.verb]}{unsure}; the bucket policy must allow s3:GetObject, s3:PutObject, "
            "s3:DeleteObject and s3:ListBucket on the cache prefix.")


def _unknown_key(answer: Answer) -> str:
    target = answer.target
    token = (" A session token is sent too: temporary keys work only at the endpoint that issued them, and "
             "only with their own token (AWS_SESSION_TOKEN)." if target.session_token else "")
    return (f"{answer.lead}: Access Denied ({answer.shown_code}): the endpoint {target.endpoint} does not know the "
            f"{target.key_and_source.replace('access key', 'access key id', 1)}; check AWS_ACCESS_KEY_ID: a typo, a "
            f"deleted key, or a key of another account or endpoint.{token}")


def _wrong_secret(answer: Answer) -> str:
    target = answer.target
    return (f"{answer.lead}: Access Denied (SignatureDoesNotMatch): the secret key is not the one of "
            f"{target.key_and_source}; check the secret key (AWS_SECRET_ACCESS_KEY): a "
            "character missing or extra, or the secret of another key.")


def _invalid_token(answer: Answer) -> str:
    target = answer.target
    return (f"{answer.lead}: Access Denied ({answer.shown_code}): the endpoint {target.endpoint} rejected the session "
            f"token sent with {target.key_and_source}; check "
            "AWS_SESSION_TOKEN: it must be the token issued together with these keys.")


def _missing_bucket(answer: Answer) -> str:
    target = answer.target
    client = f"'s3', endpoint_url={target.endpoint_setting!r}" if target.endpoint_setting else "'s3'"
    hint = f"python -c \"import boto3; boto3.client({client}).create_bucket(Bucket={target.bucket!r})\""
    return (f"{answer.lead}: bucket {target.bucket!r} does not exist at {target.endpoint}; fix CACHE_DIR, or "
            f"create it: aws s3 mb s3://{target.bucket}, or without the AWS CLI: {hint}")


RULES: tuple[Rule, ...] = (
    Rule("not an S3 server", _not_an_s3_document, ConfigError, lambda answer: not_s3(
        answer.target, answer.verb, answer.path,
        f"HTTP {answer.status} with {content_type(answer.headers)} content")),
    Rule("bucket in another region",
         _codes("PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"),
         ConfigError, _wrong_region),
    Rule("expired session token",
         _codes("ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"),
         CredentialsError, _expired),
    Rule("skewed clock", _codes("RequestTimeTooSkewed"), ConfigError, _skewed),
    Rule("permission missing", _codes("AccessDenied", "403", "AllAccessDisabled", "AccountProblem"),
         AccessDenied, _denied),
    Rule("unknown access key id", _codes("InvalidAccessKeyId", "InvalidClientTokenId"), CredentialsError,
         _unknown_key),
    Rule("wrong secret key", _codes("SignatureDoesNotMatch"), CredentialsError, _wrong_secret),
    Rule("invalid session token", _codes("InvalidToken"), CredentialsError, _invalid_token),
    Rule("missing bucket",
         lambda answer: answer.code == "NoSuchBucket" or (answer.verb == "opening" and answer.code in MISSING_CODES),
         ConfigError, _missing_bucket),
    Rule("object replaced while read", lambda answer: answer.code == "PreconditionFailed" and answer.verb == "loading",
         ObjectChanged, lambda answer: f"{answer.lead}: the object was replaced while it was being read; "
                                          "load it again."),
    Rule("overloaded or failing", lambda answer: _overloaded(answer.code, answer.status), StoreUnavailable,
         lambda answer: f"{answer.lead}: {answer.shown_code} (HTTP {answer.status}) after {answer.tally}; the service "
                        "is overloaded or failing. Try again later."),
    Rule("any other answer", lambda answer: True, JangdokError,
         lambda answer: f"{answer.lead}: {answer.shown_code} (HTTP {answer.status}): {answer.message}"),
)
"""Every answer meets the first rule that applies; the last applies to all."""


def rule_for(answer: Answer) -> Rule:
    return next(rule for rule in RULES if rule.applies(answer))


def translate(exc: BaseException, verb: str, path: str, tally: str, target: Target) -> JangdokError:
    """The jangdok error for a botocore or connection error met while ``verb`` ``path``."""
    if isinstance(exc, bce.ClientError):
        code, status = error_code(exc)
        answer = Answer(code, status, exc.response.get("Error", {}),
                        exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}), verb, path, tally, target)
        rule = rule_for(answer)
        return rule.error(rule.says(answer))
    if isinstance(exc, bce.NoCredentialsError):
        return NoCredentials(f"S3 client initialization failed: Unable to locate credentials ({path})")
    return StoreUnavailable(
        f"S3 error {verb} {path}: Connection timeout or failure ({type(exc).__name__}: {quoted(exc)}) after {tally}. "
        f"Check that the endpoint {target.endpoint} is reachable from this machine (network, AWS_ENDPOINT_URL, "
        "proxy), or use a local cache folder."
    )
