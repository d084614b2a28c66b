"""The hardware ceilings: what a load or save of the pickled bytes costs with no library at all."""

from __future__ import annotations

import os

from .tools import BUCKET, Context, Op, RequestCounter, Tool
from .values import Case


class MemoryCeiling(Tool):
    tool, store, role = "ceiling", "memory", "ceiling"

    def ops(self) -> list[Op]:  # a fresh buffer, as any load must allocate one
        return [self.op("memory copy", "load", lambda c: bytearray(c.pickled), needs="bytes", returns_bytes=True)]


class LocalCeiling(Tool):
    tool, store, role = "ceiling", "local", "ceiling"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.folder = ctx.folder("raw")
        self.buffers: dict[str, bytearray] = {}

    def write(self, case: Case) -> None:
        path = str(self.folder / case.key)
        with open(path + ".tmp", "wb") as file:
            file.write(case.pickled)
        os.replace(path + ".tmp", path)

    def allocate(self, case: Case) -> None:
        size = os.path.getsize(self.folder / case.key)
        if len(self.buffers.get(case.name, b"")) != size:
            self.buffers[case.name] = bytearray(size)

    def read(self, case: Case) -> bytearray:  # into a preallocated buffer: the page cache's speed
        buffer = self.buffers[case.name]
        with open(self.folder / case.key, "rb", buffering=0) as file:
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                done += file.readinto(view[done:]) or len(buffer)
        return buffer

    def ops(self) -> list[Op]:
        return [self.op("disk write", "save", self.write, needs="bytes"),
                self.op("page-cache read", "load", self.read, prepare=self.allocate, returns_bytes=True)]


class S3Ceiling(Tool):
    tool, store, role = "ceiling", "S3", "ceiling"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.client = ctx.boto3_client()
        self.counter = RequestCounter(self.client)

    def ops(self) -> list[Op]:
        put = lambda c: self.client.put_object(Bucket=BUCKET, Key=f"raw/{c.key}", Body=c.pickled)  # noqa: E731
        get = lambda c: self.client.get_object(Bucket=BUCKET, Key=f"raw/{c.key}")["Body"].read()  # noqa: E731
        return [self.op("raw PUT", "save", put, needs="bytes", counter=self.counter),
                self.op("raw GET", "load", get, counter=self.counter, returns_bytes=True)]
