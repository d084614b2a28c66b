"""The tools measured through the shaped link beside jangdok and the seed: the link's own
ceiling, and the peers' parallel paths (boto3's transfer manager, s3fs, obstore), each given
jangdok's ``concurrency`` and ``part_size``."""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .peers import Obstore, S3fs
from .tools import BUCKET, Context, Op, Tool
from .values import Case


def ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` pieces of ``part_size`` covering ``size`` bytes."""
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


class LinkCeiling(Tool):
    """What the link itself allows: the pickled bytes moved with plain boto3 and no library
    work, in ``part_size`` pieces on up to ``concurrency`` connections at once: ranged GETs
    into one preallocated buffer, and a multipart upload (one PUT when the bytes fit a part)."""

    tool, store, role = "ceiling", "S3", "ceiling"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.concurrency, self.part_size = ctx.transfer()
        self.client = ctx.boto3_client(max_pool_connections=self.concurrency)
        self.buffers: dict[str, bytearray] = {}

    @staticmethod
    def key(case: Case) -> str:
        return f"link-raw/{case.key}"

    def put(self, case: Case) -> None:
        self.put_bytes(case.pickled, self.key(case))

    def put_bytes(self, data: bytes | memoryview, key: str) -> None:
        if len(data) <= self.part_size:
            self.client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
            return
        upload = self.client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

        def part(number: int, start: int, stop: int) -> dict[str, Any]:
            answer = self.client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number,
                                             Body=bytes(data[start:stop]))
            return {"PartNumber": number, "ETag": answer["ETag"]}

        pieces = ranges(len(data), self.part_size)
        with ThreadPoolExecutor(min(self.concurrency, len(pieces))) as pool:
            parts = list(pool.map(part, range(1, len(pieces) + 1), *zip(*pieces, strict=True)))
        self.client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                              MultipartUpload={"Parts": parts})

    def allocate(self, case: Case) -> None:  # untimed: the object's size, and a buffer to read into
        self.buffers[case.name] = self.buffer_for(self.key(case), self.buffers.get(case.name))

    def buffer_for(self, key: str, buffer: bytearray | None = None) -> bytearray:
        size = self.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        return buffer if buffer is not None and len(buffer) == size else bytearray(size)

    def get_into(self, key: str, buffer: bytearray, part_size: int | None = None) -> bytearray:
        view = memoryview(buffer)

        def read(start: int, stop: int) -> None:
            body = self.client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{stop - 1}")["Body"]
            done = start
            while done < stop:
                got = body.readinto(view[done:stop])
                if not got:
                    raise EOFError(f"{key}: the answer ended at byte {done} of {stop}")
                done += got

        pieces = ranges(len(buffer), part_size or self.part_size)
        with ThreadPoolExecutor(min(self.concurrency, len(pieces))) as pool:
            list(pool.map(read, *zip(*pieces, strict=True)))
        return buffer

    def ops(self) -> list[Op]:
        return [self.op("parallel PUT", "save", self.put, needs="bytes"),
                self.op("parallel GET", "load", lambda c: self.get_into(self.key(c), self.buffers[c.name]),
                        prepare=self.allocate, returns_bytes=True),
                # The link's total: as many ranges as connections, so none waits for another.
                self.op("GET, all connections", "load", self.get_spread, prepare=self.allocate, returns_bytes=True,
                        only="BIG")]

    def get_spread(self, case: Case) -> bytearray:
        buffer = self.buffers[case.name]
        return self.get_into(self.key(case), buffer, -(-len(buffer) // self.concurrency))


class Boto3Transfer(Tool):
    """boto3's transfer manager: ``upload_fileobj`` and ``download_fileobj`` with a TransferConfig."""

    tool, store = "boto3", "S3"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        from boto3.s3.transfer import TransferConfig

        concurrency, part_size = ctx.transfer()
        self.client = ctx.boto3_client(max_pool_connections=concurrency)
        self.config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                                     max_concurrency=concurrency)

    def save(self, case: Case) -> None:
        self.client.upload_fileobj(io.BytesIO(pickle.dumps(case.value)), BUCKET, f"boto3/{case.key}",
                                   Config=self.config)

    def load(self, case: Case) -> Any:
        into = io.BytesIO()
        self.client.download_fileobj(BUCKET, f"boto3/{case.key}", into, Config=self.config)
        return pickle.loads(into.getbuffer())

    def ops(self) -> list[Op]:
        return [self.op("upload_fileobj", "save", self.save), self.op("download_fileobj", "load", self.load)]


class S3fsParallel(S3fs):
    """s3fs's concurrent paths: ``cat_file`` (a HEAD, then ranges of ``chunksize`` at once) and
    ``pipe_file`` (a multipart upload, parts at once)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import s3fs  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.concurrency, self.part_size = ctx.transfer()
        self.fs = s3fs.S3FileSystem(key=ctx.access_key, secret=ctx.secret_key, endpoint_url=ctx.endpoint,
                                    client_kwargs={"region_name": "us-east-1"}, use_listings_cache=False,
                                    max_concurrency=self.concurrency,
                                    config_kwargs={"max_pool_connections": self.concurrency})

    def ops(self) -> list[Op]:
        path = lambda c: f"{BUCKET}/s3fs/{c.key}"  # noqa: E731
        transfer = {"chunksize": self.part_size, "max_concurrency": self.concurrency}
        return [self.op("pipe_file", "save", lambda c: self.fs.pipe_file(path(c), pickle.dumps(c.value), **transfer)),
                self.op("cat_file", "load", lambda c: pickle.loads(self.fs.cat_file(path(c), **transfer)))]


class ObstoreParallel(Obstore):
    """obstore's concurrent paths: ``put`` (multipart, parts at once) and, after a HEAD, every
    range at once with ``get_range`` on threads. (Its ``get_ranges`` merges adjacent ranges into
    one request, coalescing off or not; ``get_range_async`` gathered in asyncio took seconds for
    what threads fetch in a quarter of one, even with no link between.)"""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.concurrency, self.part_size = ctx.transfer()

    def put(self, case: Case) -> None:
        self.obstore.put(self.store_, f"obstore/{case.key}", pickle.dumps(case.value), chunk_size=self.part_size,
                         max_concurrency=self.concurrency)

    def get(self, case: Case) -> Any:
        path = f"obstore/{case.key}"
        pieces = ranges(self.obstore.head(self.store_, path)["size"], self.part_size)

        def read(start: int, stop: int) -> Any:
            return self.obstore.get_range(self.store_, path, start=start, end=stop)

        with ThreadPoolExecutor(min(self.concurrency, len(pieces))) as pool:
            return pickle.loads(b"".join(pool.map(read, *zip(*pieces, strict=True))))

    def ops(self) -> list[Op]:
        return [self.op("put multipart", "save", self.put), self.op("get_range, threads", "load", self.get)]
