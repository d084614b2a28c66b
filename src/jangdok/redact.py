"""No log record shows a credential, whoever logs it and whatever handlers the app has.

At DEBUG, botocore logs every request's headers (the session token, and the access key id in
``Authorization``), its canonical request (the token again), and every response body (AWS's
``SignatureDoesNotMatch`` document repeats the access key id and the canonical request). An app
that calls ``logging.basicConfig(level=logging.DEBUG)``, or ``jangdok --debug``, would print all
of it. So the records of the libraries that handle credentials (botocore, boto3, s3transfer,
urllib3, and jangdok itself) are cleaned where every record is made, by a log record factory
installed once when jangdok makes its first S3 client: before any handler, filter or formatter
sees them, however they propagate. Two things are masked to their last 4 characters:

- the values jangdok signs with (access key id, secret, session token), wherever they appear
  (those of 8 characters or more: a shorter one would mask ordinary words);
- whatever value sits where credentials go in requests and responses (the token header, the
  key id in ``Credential=``, signatures, which can be replayed for minutes, and the credential
  fields of STS or SSO answers), because credentials that boto3 fetches or refreshes later
  (roles, SSO) are not known in advance.

Only records that a logger is enabled for are ever made, so with DEBUG off this costs nothing;
a record is formatted once more when it is made. A record's traceback is formatted once to look
for credentials, and replaced (``exc_text``) only if it held one: every other traceback is left
to the app's own formatter (one-line or JSON tracebacks). A factory set later by the app without
wrapping the current one (``logging.getLogRecordFactory()``) ends this protection.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

__all__ = ["protect", "redact"]

_LIBRARIES = frozenset({"botocore", "boto3", "s3transfer", "urllib3", "jangdok"})
_SHAPES = (
    # X-Amz-Security-Token in headers, canonical requests and query strings.
    re.compile(r"""(?i)(x-amz-security-token['"]?\s*[:=]\s*b?['"]?)([^'"\s,;&}]+)"""),
    # The access key id in Authorization (Credential=AKIA.../date/...) and in presigned URLs.
    re.compile(r"""(Credential=)([^/\s,'";&]+)"""),
    # Signatures: Authorization's and presigned URLs' ``Signature=``, botocore.auth's line.
    re.compile(r"""(Signature=)([0-9a-fA-F]{16,})"""),
    re.compile(r"""(Signature:\s*)([0-9a-fA-F]{16,})"""),
    # Credential fields of STS (XML) and SSO or container (JSON) answers, and AWS error documents.
    re.compile(r"""(<(?:SecretAccessKey|SessionToken|AccessKeyId|AWSAccessKeyId|Token)>)([^<]+)"""),
    re.compile(r"""(?i)(["'](?:secretAccessKey|sessionToken|accessKeyId|token|accessToken)["']\s*:\s*["'])"""
               r"""([^"']+)"""),
)

# Shorter values are not looked for: masking every "test" in the log would hide more than it
# protects. They are still masked where credentials go (the shapes above).
_SHORTEST_KNOWN = 8
_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # another thread may hold it at the fork
    os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))
_installed = False
_known: tuple[tuple[str, str], ...] = ()
"""(secret, its masked form), longest first so a secret that contains another is masked whole."""


def _masked(value: str) -> str:
    """The last 4 characters of a long value; nothing of a short one (as ``mask_secret``)."""
    if value.startswith("****"):
        return value
    return "****" + value[-4:] if len(value) >= 12 else "****"


def redact(text: str) -> str:
    """``text`` with every credential masked (see the module's description)."""
    for shape in _SHAPES:
        text = shape.sub(lambda match: match.group(1) + _masked(match.group(2)), text)
    for secret, masked in _known:
        if secret in text:
            text = text.replace(secret, masked)
    return text


def _clean(record: logging.LogRecord) -> None:
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record must still not show its arguments
        text = f"{record.msg} (arguments withheld: the record could not be formatted)"
    clean = redact(text)
    if clean != text:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        # Formatters print exc_text instead of formatting the exception when it is set: so it is
        # set only to a traceback that held a credential, and every other traceback is left to
        # the app's own formatter (one-line, JSON).
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_text = clean
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _install() -> None:
    made = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        if record.name.partition(".")[0] in _LIBRARIES:
            _clean(record)
        return record

    logging.setLogRecordFactory(make_record)


def protect(*secrets: str | None) -> None:
    """Mask these values in every record from now on (installing the factory the first time)."""
    global _installed, _known
    values = {secret for secret in secrets if secret and len(secret) >= _SHORTEST_KNOWN}
    with _lock:
        if not _installed:
            _install()
            _installed = True
        known = dict(_known)
        for secret in values - known.keys():
            known[secret] = _masked(secret)
        _known = tuple(sorted(known.items(), key=lambda item: -len(item[0])))
