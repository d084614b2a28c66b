"""What the pool workers of tests/test_workers.py run: a module of its own so that spawn and
forkserver workers, which start a fresh interpreter, import it by name; light (no numpy, no
pytest), as every worker imports it.

``area`` is memoized at import on ``cache``, configured by the environment (``CACHE_DIR`` and
the credentials) on its first use: each worker process makes its own, as a program's workers
do. The test process only asks ``area`` for keys (which need no store), never calls it: its
module's cache would keep the first test's settings. Each computation leaves a marker file in
``$TRAVEL_MARKERS``, so a test counts computations across processes.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Any

from workers import use_environment

from jangdok import Cache, Stats

__all__ = ["Point", "ProjectCache", "area", "areas", "key_of", "fill", "store_label", "use_environment"]

cache = Cache()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class ProjectCache(Cache):
    """A subclass with an __init__ of its own, as users write them."""

    def __init__(self, project: str, root: str) -> None:
        super().__init__(os.path.join(root, project))
        self.project = project


def mark(what: str) -> None:
    with open(os.path.join(os.environ["TRAVEL_MARKERS"], f"{what}-{uuid.uuid4().hex}"), "x"):
        pass


@cache.memoize
def area(point: Point) -> int:
    mark(f"area-{point.x}-{point.y}")
    return point.x * point.y


def areas(points: list[Point]) -> tuple[list[int], Stats]:
    """``area`` of each point, and what this call did: the difference of this process's
    module-level cache's stats, which count every call the process ran before."""
    before = cache.stats()
    values = [area(point) for point in points]
    return values, cache.stats() - before


def key_of(point: Point) -> str:
    """The key this process computes for ``area(point)``."""
    return area.key(point)


def made(key: str) -> dict[str, str]:
    mark(key.replace("/", "-"))
    return {"key": key, "pid": str(os.getpid())}


def fill(travelled: Cache, key: str) -> tuple[Any, Stats]:
    """Through a cache that travelled here (made anew for this call): the value under ``key``,
    computed once across processes, and this call's stats."""
    value = travelled.get_or_compute(key, lambda: made(key))
    return value["key"], travelled.stats()


def store_label(travelled: Cache) -> tuple[str, str]:
    """Where a cache that travelled here writes, and where its credentials came from."""
    travelled.put("probe.pkl", os.getpid())
    return travelled.store_label, travelled.settings.credentials_source
