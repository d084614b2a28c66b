"""Statistics that travel: what :meth:`Cache.stats <jangdok.Cache.stats>` returns, which a
worker process sends back (it pickles) and a parent adds up. A worker's cache counts every
task the worker ran, so a task sends the difference it made:

    def work(chunk):
        before = cache.stats()
        ...
        return cache.stats() - before

    totals = sum(pool.map(work, chunks))
    totals["S3"].hits
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .entries import TierStats

__all__ = ["Stats"]


def _combined(first: TierStats, second: TierStats, combine: Callable[[Any, Any], Any]) -> TierStats:
    return TierStats(**{item.name: combine(getattr(first, item.name), getattr(second, item.name))
                        for item in dataclasses.fields(TierStats)})


class Stats(dict[str, TierStats]):
    """:class:`~jangdok.entries.TierStats` by store label (``"S3"``, ``"local"``, ``"local
    tier"``, ``"local (fallback)"``): a dict, which adds up with ``+`` tier by tier (a label
    only one side has is kept as it is), and with ``sum()``, with or without a start value
    (``sum(many)`` or ``sum(many, Stats())``), and subtracts with ``-`` (``after - before``: what
    happened in between; a label only one side has counts as zero on the other). Adding and
    subtracting make new objects: neither side changes."""

    @classmethod
    def of(cls, tiers: Mapping[str, TierStats] | Iterable[tuple[str, TierStats]]) -> Stats:
        """Stats holding copies of ``tiers`` (a mapping or pairs), so the caller's stay its own."""
        return cls((label, dataclasses.replace(tier)) for label, tier in dict(tiers).items())

    def __add__(self, other: object) -> Stats:
        if not isinstance(other, Mapping):
            return NotImplemented
        total = Stats.of(self)
        for label, tier in other.items():
            total[label] = _combined(total[label], tier, operator.add) if label in total else dataclasses.replace(tier)
        return total

    def __sub__(self, other: object) -> Stats:
        if not isinstance(other, Mapping):
            return NotImplemented
        return Stats((label, _combined(self.get(label, TierStats()), other.get(label, TierStats()), operator.sub))
                     for label in {**self, **other})

    def __radd__(self, other: object) -> Stats:
        if isinstance(other, int) and other == 0:  # sum()'s start
            return Stats.of(self)
        if isinstance(other, Mapping):
            return Stats.of(other) + self
        return NotImplemented
