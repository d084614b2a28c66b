"""The S3 store: objects under ``s3://bucket/prefix/``, read, written and deleted through the
store contract, with our own retries (see :mod:`jangdok.stores.s3`)."""

from __future__ import annotations

import functools
import io
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import botocore.exceptions as bce

from ...errors import AccessDenied, ConfigError, JangdokError, StoreUnavailable
from ...location import TEMP_MARKER, Location, validate_key
from ...perprocess import PerProcess
from ...retry import RetryBudget, RetryExhausted, RetryPolicy
from ...settings import Settings, mask_url
from ..base import UNCHANGED, Chunks, ObjectInfo, Reader, Store, Unchanged, check_range
from .bodies import ChunkFile, Helpers, Sent, split_into_parts
from .capabilities import ProbedCapabilities
from .client import make_client
from .listing import OBJECTS, UPLOADS, Paging, pages
from .multipart import upload_in_parts
from .reader import ObjectReader, absent_header
from .translate import (
    MISSING_CODES,
    Target,
    content_type,
    error_code,
    is_transient,
    not_s3,
    quoted,
    translate,
)

__all__ = ["S3Store"]

log = logging.getLogger("jangdok")
T = TypeVar("T")

_IMPOSSIBLE_ETAG = '"' + "0" * 32 + '"'  # no object has it: conditions on it must fail
# Never an empty body: SeaweedFS answers an empty PutObject with a stray line, which the next
# response on the same kept-alive connection then trips over (urllib3 "Failed to parse headers").
_PROBE_BODY = b"jangdok capability probe"
_BATCH_DELETE = 1000  # DeleteObjects' maximum keys per request
_now = time.time  # what cleanup compares the server's times with; the tests set it through this name


class S3Store(Store):
    """Objects under ``s3://bucket/prefix/``; a key maps to ``prefix + key``."""

    name = "S3"
    capabilities: ProbedCapabilities

    def __init__(self, location: Location, settings: Settings) -> None:
        if not location.is_s3:
            raise ValueError(f"S3Store needs an s3:// location, got {location.url}")
        self.location = location
        self.settings = settings
        self.part_size = settings.part_size
        """Objects larger than this travel in parallel ranges (reads) and parts (writes) of it."""
        self.concurrency = settings.concurrency
        """Requests one read or write keeps in flight at once."""
        self.list_page_size = 1000  # S3's maximum keys per listing request
        # identity: the masked access key the client signs with, e.g. "****ABCD", for messages
        client, self.identity = make_client(settings)
        self._clients = PerProcess(lambda: make_client(settings)[0], client)
        self._helpers = PerProcess(lambda: Helpers(settings.concurrency))
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            total_timeout=settings.total_timeout,
            attempt_timeout=settings.connect_timeout + settings.read_timeout,
        )
        self.bucket = location.root
        endpoint = mask_url(client.meta.endpoint_url)  # as messages quote it
        self.capabilities = ProbedCapabilities(endpoint, self.bucket, {
            "conditional_write": self._probe_conditional_write,
            "conditional_delete": self._probe_conditional_delete,
            "conditional_batch_delete": self._probe_conditional_batch_delete,
        })
        self._target = Target(bucket=self.bucket, endpoint=endpoint, region=client.meta.region_name,
                              identity=self.identity, credentials_source=settings.credentials_source,
                              endpoint_setting=settings.endpoint_url and mask_url(settings.endpoint_url),
                              session_token=bool(settings.session_token))

    @property
    def helpers(self) -> Helpers:
        """This process's budget of transfer threads, shared by all its large reads and writes."""
        return self._helpers.get()

    @property
    def client(self) -> Any:
        """This process's boto3 client: a forked child never shares its parent's connections."""
        return self._clients.get()

    # -- probes of what the server honours (see ProbedCapabilities) ------------------------

    def _probe(self, trial: Callable[[str], bool], what: str) -> bool | None:
        """Run ``trial`` on a fresh probe object (created first, removed after; its reserved
        name keeps it out of listings, and ``cleanup`` removes one left by a crash) and return
        its verdict; ``None`` if it could not be tried (no s3:PutObject, an outage)."""
        probe = self.location.prefix + TEMP_MARKER + "probe-" + secrets.token_hex(8)
        try:
            self.call("saving", None, lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=_PROBE_BODY))
        except JangdokError as exc:  # read-only credentials, or an outage: nothing can be known
            log.debug("cannot probe %s on %s (%s); asking again later", what, self.location.url, exc)
            return None
        try:
            verdict: bool | None = self.call("probing", None, lambda: trial(probe))
        except JangdokError as exc:
            log.debug("%s probe on %s failed (%s); asking again later", what, self.location.url, exc)
            verdict = None
        try:
            self.call("deleting", None, lambda: self.client.delete_object(Bucket=self.bucket, Key=probe))
        except JangdokError as exc:  # cleanup removes it later: its name marks it as a probe
            log.debug("could not remove the probe object %s: %s", probe, exc)
        return verdict

    def _refused(self, request: Callable[[], object], *statuses: int) -> bool:
        try:
            request()
        except bce.ClientError as exc:
            if error_code(exc)[1] in statuses:
                return True
            raise
        return False

    def _probe_conditional_write(self) -> bool | None:
        """Write the probe again under each condition of ``write_if``: ``If-None-Match: *``
        (create only if absent: taking a lease) and ``If-Match`` with an ETag it cannot have
        (replace only that version: renewing or taking over one). A server that enforces a
        condition refuses (412, or 409 for a concurrent write); one may enforce one and not
        the other, and leases need both."""

        def ignored(probe: str) -> list[str]:
            conditions = {"If-None-Match": {"IfNoneMatch": "*"}, "If-Match": {"IfMatch": _IMPOSSIBLE_ETAG}}
            put = functools.partial(self.client.put_object, Bucket=self.bucket, Key=probe, Body=_PROBE_BODY)
            return [header for header, condition in conditions.items()
                    if not self._refused(functools.partial(put, **condition), 409, 412)]

        found: list[str] = []

        def trial(probe: str) -> bool:
            found[:] = ignored(probe)
            return not found

        honoured = self._probe(trial, "conditional write")
        if honoured is False:
            log.warning("S3 endpoint %s ignores %s on PutObject: leases (compute once) are best effort, and two "
                        "processes may compute the same entry at the same time", self._target.endpoint,
                        " and ".join(found))
        return honoured

    def _probe_conditional_delete(self) -> bool | None:
        """Delete the probe under an ETag it cannot have: a server that enforces the condition
        refuses (412), one that ignores it deletes."""
        honoured = self._probe(lambda probe: self._refused(lambda: self.client.delete_object(
            Bucket=self.bucket, Key=probe, IfMatch=_IMPOSSIBLE_ETAG), 412), "conditional delete")
        if honoured is False:
            log.warning("S3 endpoint %s ignores If-Match on DeleteObject: a damaged entry is deleted after a "
                        "check, and a good entry written in that instant could be deleted with it",
                        self._target.endpoint)
        return honoured

    def _probe_conditional_batch_delete(self) -> bool | None:
        """Whether DeleteObjects refuses an object whose ETag differs from the one given."""

        def trial(probe: str) -> bool:
            response = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": probe, "ETag": _IMPOSSIBLE_ETAG}], "Quiet": False})
            return any(error.get("Code") == "PreconditionFailed" for error in response.get("Errors", []))

        honoured = self._probe(trial, "batch delete")
        if honoured is False:
            log.info("S3 endpoint %s ignores ETag conditions in DeleteObjects; prune deletes one key at a time",
                     self._target.endpoint)
        return honoured

    # -- error handling -------------------------------------------------------------------

    def call(self, verb: str, key: str | None, operation: Callable[[], T], budget: RetryBudget | None = None,
             path: str | None = None) -> T:
        """Run ``operation`` under the retry policy (or ``budget``, one transfer's), raising a
        jangdok error naming ``path`` (by default the key's, or the location's)."""
        path = path or (self.path(key) if key is not None else self.location.url)
        try:
            return (budget or self.policy.budget()).call(operation, is_transient, f"{verb} {path}")
        except RetryExhausted as exc:
            tally = f"{exc.attempts} attempt(s) in {exc.elapsed:.1f} s"
            raise translate(exc.last, verb, path, tally, self._target) from exc.last
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise translate(exc, verb, path, "1 attempt", self._target) from exc

    # -- the store contract ---------------------------------------------------------------

    def get_object(self, key: str, start: int, stop: int | None, if_match: str | None = None) -> dict[str, Any]:
        """One GetObject of bytes ``[start, stop)``, only of version ``if_match`` if given (raises
        botocore's errors: run it through :meth:`call`)."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.location.object_key(key)}
        if start or stop is not None:
            request["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        if if_match:
            request["IfMatch"] = if_match
        return self.client.get_object(**request)

    def check(self) -> None:
        """Confirm the bucket exists and the credentials are accepted: a one-key listing of the
        prefix. Unlike HEAD, whose 403 has no body, a listing's error document tells a rejected
        secret (raised now, once) from a missing permission.

        AccessDenied passes: a policy may grant object access on the prefix without
        s3:ListBucket, and the object operations then name what they lack.
        """
        try:
            listing = self.call("opening", None, lambda: self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.location.prefix, MaxKeys=1))
        except AccessDenied as exc:
            log.debug("listing refused on %s (%s); the object operations will tell", self.location.url, exc)
            return
        if "IsTruncated" not in listing:  # every S3 listing says; a web server's 200 page does not
            content = content_type(listing.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
            raise ConfigError(not_s3(self._target, "opening", self.location.url,
                                     f"a listing with HTTP 200 and {content} content"))

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        """The first GET asks for one part at most: an entry that fits costs that one request,
        and the rest of a larger one comes in parallel ranges when the reader is asked to
        ``fill`` a buffer with it (see :mod:`.reader`)."""
        check_range(start, stop)
        first_stop = start + self.part_size if stop is None else min(stop, start + self.part_size)

        def get() -> dict[str, Any] | None:
            if stop == start:  # no Range header can ask for zero bytes
                return {"InvalidRange": True}
            try:
                return self.get_object(key, start, first_stop)
            except bce.ClientError as exc:
                code, _ = error_code(exc)
                if code in MISSING_CODES:
                    return None
                if code == "InvalidRange":  # start at or past the end of the object: no bytes to send
                    return {"InvalidRange": True}
                raise

        response = self.call("loading", key, get)
        if response is not None and response.get("InvalidRange"):
            found = self.stat(key)  # a 416 answer says nothing about the object itself
            if found is None:
                return None
            response = {"Body": io.BytesIO(b""), "ContentLength": 0, "ETag": found.version,
                        "ContentRange": f"bytes {start}-{start}/{found.size}",
                        "LastModified": datetime.fromtimestamp(found.modified, timezone.utc)}
        return None if response is None else ObjectReader(self, key, response, start, stop)

    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        """One PutObject up to ``part_size`` bytes; above it, a multipart upload whose parts go
        up in parallel (see :mod:`.multipart`), visible only once complete."""
        parts = split_into_parts(data, self.part_size)
        first = next(parts)
        second = next(parts, None)
        if second is not None:
            return upload_in_parts(self, key, itertools.chain([first, second], parts), progress)
        sent = Sent(progress)
        response = self.call("saving", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self.location.object_key(key), Body=ChunkFile(first, sent.part(1, report=True))))
        return str(response.get("ETag", ""))

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """One conditional PutObject (``If-None-Match: *`` or ``If-Match``). A retry after a
        lost answer may find its own write and report a failed condition; callers treat that
        as losing, which is safe for leases (the lease then expires unrenewed)."""
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}

        def put() -> str | None:
            try:
                response = self.client.put_object(Bucket=self.bucket, Key=self.location.object_key(key),
                                                  Body=bytes(data), **condition)
            except bce.ClientError as exc:
                code, status = error_code(exc)
                # 409: a concurrent conditional write to the same key is in progress (AWS).
                if status in (409, 412) or (version is not None and code in MISSING_CODES):
                    return None
                raise
            return str(response.get("ETag", ""))

        return self.call("saving", key, put)

    def read_if_changed(self, key: str, version: str) -> Reader | Unchanged | None:
        """One GetObject with ``If-None-Match``: 304 (no body) when the object is unchanged."""

        def get() -> dict[str, Any] | Unchanged | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.location.object_key(key),
                                              IfNoneMatch=version)
            except bce.ClientError as exc:
                code, status = error_code(exc)
                if status == 304 or code == "304":
                    return UNCHANGED
                if code in MISSING_CODES:
                    return None
                raise

        response = self.call("loading", key, get)
        if response is None or response is UNCHANGED:
            return response
        return ObjectReader(self, key, response, 0)

    def delete(self, key: str, version: str | None = None) -> bool:
        """With ``version``: one DeleteObject with ``If-Match``, atomic where the server honours
        it. Where it does not, or that is not known yet, the object is checked first and the
        condition still sent: a check-then-delete on a server that ignores it, and atomic on
        one that honours it, so an unknown answer is never less safe than a known one."""
        return self._delete(self.location.object_key(key), self.path(key), version)

    def _delete(self, object_key: str, path: str, version: str | None) -> bool:
        """:meth:`delete` of any object under the bucket (``path`` names it in messages)."""
        if version is None or self.capabilities.conditional_delete is not True:
            # S3 deletes succeed whether or not the key existed; ask first so callers can tell.
            current = self._head(object_key, path)
            if current is None or (version is not None and (current.get("ETag") or "") != version):
                return False
        condition = {} if version is None else {"IfMatch": version}

        def delete_object() -> bool:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=object_key, **condition)
            except bce.ClientError as exc:
                code, status = error_code(exc)
                if version is not None and (status == 412 or code in MISSING_CODES):
                    return False
                raise
            return True

        return self.call("deleting", None, delete_object, path=path)

    def delete_many(self, found: Iterable[ObjectInfo]) -> list[str]:
        """DeleteObjects, 1000 keys a request, each pinned to its listed ETag, where the server
        honours that pin (moto, for one, ignores it); else, or while that is unknown, one
        versioned :meth:`delete` per key, which never removes a newer object."""
        items = list(found)
        if not items or self.capabilities.conditional_batch_delete is not True:
            return super().delete_many(items)
        deleted: list[str] = []
        by_object_key = {self.location.object_key(item.key): item.key for item in items}
        for start in range(0, len(items), _BATCH_DELETE):
            batch = [{"Key": self.location.object_key(item.key), "ETag": item.version}
                     for item in items[start:start + _BATCH_DELETE]]
            response = self.call("deleting", None, functools.partial(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": False}))
            deleted += [by_object_key[done["Key"]] for done in response.get("Deleted", [])
                        if done.get("Key") in by_object_key]
            for error in response.get("Errors", []):
                if error.get("Code") not in ("PreconditionFailed", *MISSING_CODES):
                    asked = by_object_key.get(error.get("Key"))
                    log.warning("could not delete %s: %s %s",
                                self.path(asked) if asked is not None else quoted(error.get("Key"), 120),
                                quoted(error.get("Code"), 64), quoted(error.get("Message", "")))
        return deleted

    def cleanup(self, older_than: float, prefix: str = "") -> int:
        """Abort multipart uploads under ``prefix`` that made no progress for ``older_than``
        seconds (the parts of writers killed mid-upload, which S3 keeps and bills forever; a
        slow live upload keeps adding parts), and remove stale probe objects."""
        cutoff = _now() - older_than
        removed = 0
        for upload in self._listed(self.client.list_multipart_uploads, UPLOADS, self.location.prefix + prefix):
            if self._last_progress(upload) < cutoff and self._abort(upload["Key"], upload["UploadId"]):
                removed += 1
        return removed + self._remove_stale_probes(cutoff)

    def _listed(self, operation: Callable[..., dict[str, Any]], paging: Paging, prefix: str,
                **request: Any) -> Iterator[dict[str, Any]]:
        """The items of a listing under ``prefix`` (see :mod:`.listing`: nothing outside it, and
        no listing without end), each page retried on its own."""
        def fetch(page_request: dict[str, Any]) -> dict[str, Any]:
            return self.call("listing", None, lambda: operation(**page_request))

        return pages(fetch, {"Bucket": self.bucket, "Prefix": prefix, **request}, paging, prefix,
                     self.location.url, self._target.endpoint)

    def _last_progress(self, upload: dict[str, Any]) -> float:
        """When an upload last received a part (one listing of up to 1000 parts); now, if it
        completed or was aborted meanwhile."""
        def parts() -> list[dict[str, Any]] | None:
            try:
                return self.client.list_parts(Bucket=self.bucket, Key=upload["Key"],
                                              UploadId=upload["UploadId"]).get("Parts", [])
            except bce.ClientError as exc:
                if error_code(exc)[0] == "NoSuchUpload":
                    return None
                raise

        found = self.call("listing", None, parts)
        if found is None:
            return _now()
        return max([upload["Initiated"].timestamp(),
                    *(part["LastModified"].timestamp() for part in found if "LastModified" in part)])

    def _remove_stale_probes(self, cutoff: float) -> int:
        """Remove probe objects a crash left, each only in the version listed: a listing is
        believed only as far as its ETag, so a forged one deletes nothing."""
        removed = 0
        for item in self._listed(self.client.list_objects_v2, OBJECTS, self.location.prefix + TEMP_MARKER):
            if item.get("ETag") and item["LastModified"].timestamp() < cutoff:  # no ETag: nothing to pin to
                removed += self._delete(item["Key"], f"s3://{self.bucket}/{item['Key']}", item["ETag"])
        return removed

    def _abort(self, object_key: str, upload_id: str) -> bool:
        def abort() -> bool:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            except bce.ClientError as exc:
                if error_code(exc)[0] == "NoSuchUpload":  # completed or aborted meanwhile
                    return False
                raise
            return True

        aborted = self.call("deleting", None, abort)
        if aborted:
            log.info("aborted an incomplete multipart upload of s3://%s/%s", self.bucket, object_key)
        return aborted

    def _head(self, object_key: str, path: str) -> dict[str, Any] | None:
        """HeadObject's answer for any object under the bucket, ``None`` if it is missing."""
        def head() -> dict[str, Any] | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=object_key)
            except bce.ClientError as exc:
                if error_code(exc)[0] in MISSING_CODES:
                    return None
                raise

        return self.call("checking", None, head, path=path)

    def stat(self, key: str) -> ObjectInfo | None:
        response = self._head(self.location.object_key(key), self.path(key))
        if response is None:
            return None
        missing = absent_header(response)
        if missing:
            raise StoreUnavailable(f"S3 error checking {self.path(key)}: the answer has no {missing}; is a proxy "
                                   "rewriting responses between here and the endpoint?")
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp(),
                          response.get("ETag") or "")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Paged by hand, not with a boto3 paginator, so a failed page is retried alone.
        skip = len(self.location.prefix)
        for item in self._listed(self.client.list_objects_v2, OBJECTS, self.location.prefix + prefix,
                                 MaxKeys=self.list_page_size):
            key = item["Key"][skip:]
            try:
                validate_key(key)
            except JangdokError:
                continue  # folder markers and foreign names that are not cache keys
            yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp(), item.get("ETag") or "")

    def close(self) -> None:
        client = self._clients.mine()
        if client is not None:
            client.close()
