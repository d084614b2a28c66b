"""The peers jangdok is measured against (from the ``bench`` extra), and raw pickle in memory."""

from __future__ import annotations

import pickle
from typing import Any

from .tools import BUCKET, Context, Op, Tool
from .values import Case


class Joblib(Tool):
    tool, store = "joblib", "local"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.joblib, self.folder = joblib, ctx.folder("joblib")

    def ops(self) -> list[Op]:
        path = lambda c: self.folder / c.key  # noqa: E731
        return [self.op("dump", "save", lambda c: self.joblib.dump(c.value, path(c))),
                self.op("load", "load", lambda c: self.joblib.load(path(c))),
                self.op("load mmap_mode=r", "load", lambda c: self.joblib.load(path(c), mmap_mode="r"))]


class Diskcache(Tool):
    tool, store = "diskcache", "local"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import diskcache  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.cache = diskcache.Cache(str(ctx.folder("diskcache")))

    def ops(self) -> list[Op]:
        return [self.op("set", "save", lambda c: self.cache.set(c.key, c.value)),
                self.op("get", "load", lambda c: self.cache.get(c.key))]


class S3fs(Tool):
    tool, store = "s3fs", "S3"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import s3fs  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.fs = s3fs.S3FileSystem(key=ctx.access_key, secret=ctx.secret_key, endpoint_url=ctx.endpoint,
                                    client_kwargs={"region_name": "us-east-1"}, use_listings_cache=False)

    def save(self, case: Case) -> None:
        with self.fs.open(f"{BUCKET}/s3fs/{case.key}", "wb") as file:
            file.write(pickle.dumps(case.value))

    def load(self, case: Case) -> Any:
        with self.fs.open(f"{BUCKET}/s3fs/{case.key}", "rb") as file:
            return pickle.loads(file.read())

    def ops(self) -> list[Op]:
        return [self.op("write", "save", self.save), self.op("read", "load", self.load)]


class Obstore(Tool):
    tool, store = "obstore", "S3"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import obstore  # type: ignore[import-not-found, unused-ignore]
        from obstore.store import S3Store  # type: ignore[import-not-found, unused-ignore]

        self.obstore = obstore
        self.store_ = S3Store(BUCKET, endpoint=ctx.endpoint, access_key_id=ctx.access_key,
                              secret_access_key=ctx.secret_key, region="us-east-1",
                              virtual_hosted_style_request=False, client_options={"allow_http": True})

    def put(self, case: Case) -> None:
        self.obstore.put(self.store_, f"obstore/{case.key}", pickle.dumps(case.value))

    def get(self, case: Case) -> Any:
        return pickle.loads(self.obstore.get(self.store_, f"obstore/{case.key}").bytes())

    def ops(self) -> list[Op]:
        return [self.op("put", "save", self.put), self.op("get", "load", self.get)]


class RawPickle(Tool):
    tool, store, role = "pickle", "memory", "reference"

    def ops(self) -> list[Op]:
        return [self.op("dumps", "save", lambda c: pickle.dumps(c.value, protocol=pickle.HIGHEST_PROTOCOL)),
                self.op("loads", "load", lambda c: pickle.loads(c.pickled), needs="bytes")]
