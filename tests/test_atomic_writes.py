"""Atomic writes: concurrent writers and readers of one key never see a torn or mixed entry,
and a failed write leaves the previous entry and no temporary files behind."""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jangdok import Cache, Settings

PROCESSES = 8
ROUNDS = 12
ELEMENTS = 300_000  # 1.2 MB of float32 per value: large enough to be written in many syscalls


def value_of(writer: int, round_number: int) -> dict:
    data = np.full(ELEMENTS, writer * 1000 + round_number, np.float32)
    return {"writer": writer, "round": round_number, "data": data}


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def hammer(settings: Settings, writer: int) -> tuple[int, int, int]:
    """Alternate writes and reads of one key; return (reads, inconsistent values, misses+warnings)."""
    warnings = _CountWarnings()
    logging.getLogger("jangdok").addHandler(warnings)
    reads = inconsistent = misses = 0
    with Cache.from_settings(settings) as cache:
        for round_number in range(ROUNDS):
            cache.put("shared.pkl", value_of(writer, round_number), metadata={"writer": writer})
            for _ in range(2):
                found = cache.get_entry("shared.pkl")
                if found is None:
                    misses += 1
                    continue
                reads += 1
                value = found.value
                expected = value["writer"] * 1000 + value["round"]
                if not (np.all(value["data"] == expected) and found.info.metadata == {"writer": value["writer"]}):
                    inconsistent += 1
    return reads, inconsistent, misses + warnings.count


def test_eight_processes_never_see_a_torn_value(cache_url: str, make_settings) -> None:
    settings = make_settings(cache_url, send_secrets=True)  # the spawned get them pickled, credentials too
    with Cache.from_settings(settings) as cache:
        cache.put("shared.pkl", value_of(0, 0), metadata={"writer": 0})
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        results = list(pool.map(hammer, [settings] * PROCESSES, range(1, PROCESSES + 1)))
    reads = sum(r[0] for r in results)
    assert reads == PROCESSES * ROUNDS * 2
    assert sum(r[1] for r in results) == 0, "a reader saw a mixed value"
    assert sum(r[2] for r in results) == 0, "a reader missed or found a damaged entry"
    if not cache_url.startswith("s3://"):
        assert os.listdir(cache_url) == ["shared.pkl"], "temporary files were left behind"


def test_failed_local_write_keeps_the_old_entry_and_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cache = Cache(str(folder), fallback=False)
    cache.put("label.pkl", "old value")

    def broken_chunks():
        yield b"partial bytes that must never become visible"
        raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="No space left on device"):
        cache.store.write("label.pkl", broken_chunks())
    assert cache.get("label.pkl") == "old value"
    assert sorted(os.listdir(folder)) == ["label.pkl"]


def test_local_write_failure_is_translated_and_names_the_path(tmp_path: Path) -> None:
    from jangdok import StoreUnavailable

    folder = tmp_path / "cache"
    cache = Cache(str(folder), fallback=False)
    cache.put("chapter", "a file where a folder is needed")
    with pytest.raises(StoreUnavailable, match=r"Local error saving .*chapter.*label\.pkl"):
        cache.put("chapter/label.pkl", 1)
