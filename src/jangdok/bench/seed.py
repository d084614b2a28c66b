"""The seed's approach, written out: the baseline every jangdok figure is a ratio to."""

from __future__ import annotations

import os
import pickle
from typing import Any

from .tools import BUCKET, Context, Op, RequestCounter, Tool
from .values import Case


class SeedLocal(Tool):
    """The seed's local cache functions, written out."""

    tool, store, role = "seed", "local", "seed"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.folder = ctx.folder("seed")

    def save(self, case: Case) -> None:
        path = str(self.folder / case.key)
        with open(path + ".tmp", "wb") as file:
            pickle.dump(case.value, file)
        os.replace(path + ".tmp", path)

    def load(self, case: Case) -> Any:
        with open(self.folder / case.key, "rb") as file:
            return pickle.load(file)

    def exists_load(self, case: Case) -> Any:  # main.py's pattern: cache_exists, then cache_load_pickle
        return self.load(case) if os.path.exists(self.folder / case.key) else None

    def ops(self) -> list[Op]:
        return [self.op("save", "save", self.save), self.op("load", "load", self.load),
                self.op("exists+load", "load", self.exists_load)]


class SeedS3(Tool):
    tool, store, role = "seed", "S3", "seed"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.client = ctx.boto3_client()
        self.counter = RequestCounter(self.client)

    def save(self, case: Case) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"seed/{case.key}", Body=pickle.dumps(case.value))

    def load(self, case: Case) -> Any:
        self.client.head_object(Bucket=BUCKET, Key=f"seed/{case.key}")
        return pickle.loads(self.client.get_object(Bucket=BUCKET, Key=f"seed/{case.key}")["Body"].read())

    def exists_load(self, case: Case) -> Any:
        self.client.head_object(Bucket=BUCKET, Key=f"seed/{case.key}")
        return self.load(case)

    def ops(self) -> list[Op]:
        return [self.op(name, kind, run, counter=self.counter) for name, kind, run in
                (("save", "save", self.save), ("load", "load", self.load), ("exists+load", "load", self.exists_load))]
