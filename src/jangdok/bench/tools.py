"""What a tool is: a library on one store (``Tool``) and the operations it offers (``Op``), built
from a ``Context`` of plain values so a subprocess can rebuild it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from .values import Case

BUCKET = "bench"


@dataclass
class Context:
    """Where the tools keep their data; plain values, so a subprocess can rebuild its tool."""

    workdir: str
    endpoint: str
    access_key: str
    secret_key: str
    concurrency: int | None = None
    """jangdok's settings of the same names, for jangdok and for the tools measured beside it;
    ``None``: jangdok's defaults."""
    part_size: int | None = None

    def transfer(self) -> tuple[int, int]:
        """(concurrency, part_size), jangdok's defaults where not set."""
        from jangdok import Settings

        defaults: dict[str, Any] = {f.name: f.default for f in fields(Settings)}
        return int(self.concurrency or defaults["concurrency"]), int(self.part_size or defaults["part_size"])

    def folder(self, name: str) -> Path:
        path = Path(self.workdir) / "local" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def boto3_client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, **config))

    def jangdok_settings(self, location: str, **overrides: Any) -> Any:
        from jangdok import Settings

        if location.startswith("s3://"):
            overrides.update(endpoint_url=self.endpoint, region="us-east-1", access_key_id=self.access_key,
                             secret_access_key=self.secret_key)
        overrides.update({name: value for name, value in (("concurrency", self.concurrency),
                                                          ("part_size", self.part_size)) if value is not None})
        return Settings(cache_dir=location, fallback=False, **overrides)


class Counter(Protocol):
    """Counts requests: a :class:`RequestCounter`, or a link (:mod:`.link`) counting all that cross it."""

    @property
    def count(self) -> int: ...


class RequestCounter:
    """Counts the HTTP requests a botocore client sends (retries included)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-send.s3", self._sent)

    def _sent(self, **_: Any) -> None:
        self.count += 1


@dataclass
class Op:
    """One (tool, operation): ``run(case)`` saves or loads ``case`` and returns what it loaded."""

    tool: str
    store: str  # "local", "S3" or "memory"
    name: str
    kind: str  # "save" or "load"
    role: str  # "jangdok", "seed", "peer", "ceiling" or "reference"
    run: Callable[[Case], Any]
    needs: str | None = None  # what must exist before the timer starts: "value" or "bytes"
    counter: Counter | None = None
    prepare: Callable[[Case], None] | None = None
    returns_bytes: bool = False
    maker: str = ""  # the registry's name of the tool, to rebuild it in a subprocess
    only: str | None = None  # the one case it is measured on (default: every case)

    def applies(self, case: Case) -> bool:
        return self.only in (None, case.name)

    @property
    def id(self) -> str:
        return f"{self.tool}|{self.store}|{self.name}"


class Tool:
    """A tool on one store; ``ops()`` lists what it can do. Built lazily: imports happen here."""

    tool = ""
    store = ""
    role = "peer"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def ops(self) -> list[Op]:
        raise NotImplementedError

    def op(self, name: str, kind: str, run: Callable[[Case], Any], **extra: Any) -> Op:
        needs = "value" if kind == "save" else None
        return Op(self.tool, self.store, name, kind, self.role, run, **{"needs": needs, **extra})
