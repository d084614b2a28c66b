"""jangdok's own tools: ``Cache`` on a local folder (with and without mmap) and on S3."""

from __future__ import annotations

from .tools import BUCKET, Context, Op, RequestCounter, Tool


class JangdokLocal(Tool):
    tool, store, role = "jangdok", "local", "jangdok"

    def __init__(self, ctx: Context, mmap: bool = False) -> None:
        super().__init__(ctx)
        from jangdok import Cache

        self.mmap = mmap
        options = {"mmap": True} if mmap else {}
        self.cache = Cache.from_settings(ctx.jangdok_settings(str(ctx.folder("jangdok")), **options))

    def ops(self) -> list[Op]:
        if self.mmap:  # saving is the same with or without mmap
            return [self.op("load mmap", "load", lambda c: self.cache.get(c.key))]
        return [self.op("save", "save", lambda c: self.cache.put(c.key, c.value)),
                self.op("load", "load", lambda c: self.cache.get(c.key))]


class JangdokS3(Tool):
    tool, store, role = "jangdok", "S3", "jangdok"
    prefix = "jangdok/"  # its entries' objects: this prefix and the key

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        from jangdok import Cache
        from jangdok.stores.s3 import S3Store

        self.cache = Cache.from_settings(ctx.jangdok_settings(f"s3://{BUCKET}/{self.prefix}"))
        store = self.cache.store  # opens the store (its probe is not counted)
        if not isinstance(store, S3Store):  # fallback is off: S3, or an error on opening
            raise TypeError(f"jangdok S3 opened {store!r}, not an S3 store")
        self.counter = RequestCounter(store.client)

    def ops(self) -> list[Op]:
        return [self.op("save", "save", lambda c: self.cache.put(c.key, c.value), counter=self.counter),
                self.op("load", "load", lambda c: self.cache.get(c.key), counter=self.counter)]
