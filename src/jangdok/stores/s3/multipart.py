"""Writing large objects: a multipart upload whose parts go up in parallel.

Each part is a list of views of the value's own memory (the arrays' buffers), so nothing is
copied however many parts are in flight. The object becomes visible only when the upload
completes, so readers see the previous object or the whole new one, and a writer killed
midway leaves no object, only parts, which ``cleanup`` (or a bucket lifecycle rule) aborts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from .bodies import ChunkFile, Sent, shutting_down
from .translate import error_code, quoted

if TYPE_CHECKING:
    from .store import S3Store

__all__ = ["upload_in_parts", "UPLOAD_TOKEN"]

log = logging.getLogger("jangdok")

UPLOAD_TOKEN = "jangdok-upload"
"""User metadata naming the multipart upload that made an object."""
# How often a waiting caller reports the bytes sent by the parts in flight.
_PROGRESS_INTERVAL = 0.1


def upload_in_parts(store: S3Store, key: str, parts: Iterable[list[memoryview]],
                    progress: Callable[[int], None] | None) -> str:
    """Upload ``parts`` as one object under ``key`` and return its ETag. Parts are taken from
    ``parts`` (in this thread) only as earlier ones finish, so at most ``store.concurrency``
    (fewer when other transfers hold the store's helpers) are in flight and a streamed value
    is never held whole. On any failure (or an interrupt)
    the parts in flight are abandoned, the threads joined, and the upload aborted."""
    object_key = store.location.object_key(key)
    # The token marks the object this upload makes, so a completion whose answer was lost can
    # be recognised (see _complete).
    token = secrets.token_hex(16)
    upload = store.call("saving", key, lambda: store.client.create_multipart_upload(
        Bucket=store.bucket, Key=object_key, Metadata={UPLOAD_TOKEN: token}))
    upload_id = upload["UploadId"]
    sent = Sent(progress)
    client = store.client  # this process's, shared by the part threads (boto3 clients are thread-safe)

    def upload_part(number: int, part: list[memoryview]) -> dict[str, Any]:
        response = store.call("saving", key, lambda: client.upload_part(
            Bucket=store.bucket, Key=object_key, UploadId=upload_id, PartNumber=number,
            Body=ChunkFile(part, sent.part(number))))
        return {"PartNumber": number, "ETag": response["ETag"]}

    # The calling thread only feeds and waits: one part thread stands in for it, the others
    # are borrowed from the store's helpers.
    borrowed = store.helpers.take(store.concurrency - 1)
    try:
        numbered = enumerate(parts, start=1)
        if shutting_down():  # no part thread can be had: this thread sends them, one by one
            done = []
            for number, part in numbered:
                done.append(upload_part(number, part))
                sent.report()
        else:
            done = _send_in_parallel(numbered, upload_part, borrowed + 1, sent)
        done.sort(key=lambda part: part["PartNumber"])
        return _complete(store, key, object_key, upload_id, done, token)
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=store.bucket, Key=object_key, UploadId=upload_id)
        except Exception as exc:  # the original error matters more; cleanup and lifecycle rules remove it
            log.warning("could not abort multipart upload of %s: %s", store.path(key), quoted(exc))
        raise
    finally:
        store.helpers.give(borrowed)


def _send_in_parallel(numbered: Iterator[tuple[int, list[memoryview]]],
                      upload_part: Callable[[int, list[memoryview]], dict[str, Any]], workers: int,
                      sent: Sent) -> list[dict[str, Any]]:
    """Each part sent by one of ``workers`` threads, taken from ``numbered`` only as earlier
    ones finish; on the first failure the parts not started are dropped, the rest joined."""
    done: list[dict[str, Any]] = []
    in_flight: dict[concurrent.futures.Future[dict[str, Any]], int] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jangdok-part") as pool:
        try:
            while True:
                while len(in_flight) < workers and (item := next(numbered, None)) is not None:
                    in_flight[pool.submit(upload_part, *item)] = item[0]
                if not in_flight:
                    break
                finished, _ = concurrent.futures.wait(in_flight, timeout=_PROGRESS_INTERVAL,
                                                      return_when=concurrent.futures.FIRST_EXCEPTION)
                sent.report()
                for future in finished:
                    del in_flight[future]
                    done.append(future.result())  # the first failure ends the upload
        finally:  # on failure, the parts not started are dropped; the with joins the rest
            pool.shutdown(wait=False, cancel_futures=True)
    return done


def _complete(store: S3Store, key: str, object_key: str, upload_id: str, parts: list[dict[str, Any]],
              token: str) -> str:
    """Complete an upload and return the object's ETag. If an attempt's answer was lost, the
    server may have completed it: the retry then finds no such upload, and the object carrying
    this upload's token proves success, where reporting failure would be false."""
    attempts = 0

    def complete() -> str:
        nonlocal attempts
        attempts += 1
        try:
            response = store.client.complete_multipart_upload(
                Bucket=store.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except bce.ClientError as exc:
            made = attempts > 1 and error_code(exc)[0] == "NoSuchUpload" and _made_by(store, object_key, token)
            if made:
                log.debug("upload of %s had completed; its answer was lost", store.path(key))
                return made
            raise
        return str(response.get("ETag", ""))

    return store.call("saving", key, complete)


def _made_by(store: S3Store, object_key: str, token: str) -> str:
    """The ETag of the object if this upload (its token) made it, else ``""``."""
    try:
        response = store.client.head_object(Bucket=store.bucket, Key=object_key)
    except bce.ClientError:
        return ""
    return str(response["ETag"]) if response.get("Metadata", {}).get(UPLOAD_TOKEN) == token else ""
