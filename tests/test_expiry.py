"""Expiry and pruning on both backends: entries past their TTL are misses, prune removes what
is expired, old or over a size bound (oldest first), and a dry run only reports.

Expiry is judged by the cache's clock, which these tests move instead of sleeping: a TTL of a
fraction of a second would race a loaded machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import s3_settings
from seaweed import SeaweedServer

import jangdok.cache
from jangdok import Cache, InvalidValue, Settings
from jangdok.location import Location
from jangdok.stores import Capabilities, ObjectInfo, Store


class Clock:
    """A wall clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(cache: Cache) -> Clock:
    moved = Clock()
    cache.entries.clock = moved
    return moved


# Small entries are read in one call and checked in memory, larger ones as they stream in:
# both ways judge expiry.
@pytest.mark.parametrize("padding", [0, 1 << 20], ids=["small", "streamed"])
def test_an_entry_past_its_ttl_is_a_miss(cache: Cache, clock: Clock, padding: int) -> None:
    fresh = ("fresh", b"p" * padding)
    info = cache.put("soon.pkl", fresh, ttl=10)
    cache.put("forever.pkl", "kept")
    assert info.expires_at == info.created_at + 10 == clock.now + 10
    assert cache.get("soon.pkl") == fresh
    clock.now += 9.9
    assert cache.get("soon.pkl") == fresh
    clock.now += 0.1
    assert cache.get("soon.pkl", "miss") == "miss"
    assert cache.exists("soon.pkl"), "expired entries are left for prune or the next put"
    assert cache.stat("soon.pkl").expires_at == info.expires_at
    assert cache.get("forever.pkl") == "kept"
    cache.put("soon.pkl", "again")
    assert cache.get("soon.pkl") == "again"


def test_the_ttl_setting_is_the_default_and_bad_ttls_are_refused(cache_url: str, make_settings: Any) -> None:
    with Cache.from_settings(make_settings(cache_url, ttl=30)) as cache:
        clock = cache.entries.clock = Clock()
        assert cache.put("a.pkl", 1).expires_at == clock.now + 30
        assert cache.get("a.pkl") == 1
        clock.now += 31
        assert cache.get("a.pkl") is None
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(InvalidValue, match="ttl for key 'b.pkl' must be a positive number"):
                cache.put("b.pkl", 1, ttl=bad)


def test_prune_removes_expired_then_oldest_beyond_the_bound(cache: Cache, clock: Clock) -> None:
    cache.put("expired.pkl", b"x" * 1000, ttl=5)
    for name in ("old.pkl", "middle.pkl", "new.pkl"):
        cache.put(name, b"y" * 10_000)
        time.sleep(1.1)  # listed times order them; S3 times have one-second resolution
    clock.now = time.time() + 6  # past expired.pkl's expiry, and after every write
    sizes = {found.key: found.size for found in cache.store.list() if not found.key.startswith(".jangdok")}
    bound = sizes["middle.pkl"] + sizes["new.pkl"]
    report = cache.prune(max_bytes=bound, dry_run=True)
    assert set(report.removed) == {"expired.pkl", "old.pkl"} and report.dry_run
    assert sorted(cache.keys()) == ["expired.pkl", "middle.pkl", "new.pkl", "old.pkl"]
    report = cache.prune(max_bytes=bound)
    assert set(report.removed) == {"expired.pkl", "old.pkl"}
    assert report.bytes_freed == sizes["expired.pkl"] + sizes["old.pkl"]
    assert sorted(cache.keys()) == ["middle.pkl", "new.pkl"]
    assert not [found for found in cache.store.list(".jangdok/expiry")], "an expired entry's marker goes with it"
    assert cache.prune(older_than=0).removed and list(cache.keys()) == []


def test_prune_finds_an_expired_entry_whose_metadata_is_larger_than_one_header_probe(cache: Cache,
                                                                                     clock: Clock) -> None:
    cache.put("big-metadata.pkl", 1, metadata={"notes": "x" * 200_000}, ttl=5)
    cache.put("no-ttl.pkl", 2, metadata={"notes": "y" * 200_000})
    clock.now += 6
    assert cache.prune().removed == ("big-metadata.pkl",)
    assert list(cache.keys()) == ["no-ttl.pkl"]


def test_a_stale_marker_is_removed_and_its_entry_kept(cache: Cache, clock: Clock) -> None:
    cache.put("k.pkl", "short-lived", ttl=5)
    cache.put("k.pkl", "kept: rewritten without a ttl")
    cache.put("later.pkl", "expires later", ttl=5)
    cache.put("later.pkl", "expires much later", ttl=3600)
    clock.now += 6
    assert cache.prune(dry_run=True).removed == ()
    assert len(list(cache.store.list(".jangdok/expiry"))) == 3, "a dry run removes nothing"
    assert cache.prune().removed == ()
    assert cache.get("k.pkl") == "kept: rewritten without a ttl" and cache.get("later.pkl") == "expires much later"
    remaining = [found.key for found in cache.store.list(".jangdok/expiry")]
    assert len(remaining) == 1 and remaining[0].startswith(".jangdok/expiry/later.pkl/"), remaining


def test_prune_without_ttls_reads_no_entry_on_s3(seaweed: SeaweedServer, proxy: FaultProxy, s3_url: str) -> None:
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)
    with Cache.from_settings(settings) as cache:
        for number in range(25):
            cache.put(f"e/{number}.pkl", number)
        proxy.requests.clear()
        assert cache.prune(dry_run=True).removed == ()
        reads = [line for line in proxy.requests if line.startswith(("GET", "HEAD")) and "list-type" not in line
                 and "uploads" not in line]
        assert reads == [], "no entry is read when no entry has a TTL"
        cache.put("ttl.pkl", "x", ttl=1)
        cache.entries.clock = lambda: time.time() + 2
        proxy.requests.clear()
        assert cache.prune(dry_run=True).removed == ("ttl.pkl",)
        reads = [line for line in proxy.requests if line.startswith("GET") and "list-type" not in line
                 and "uploads" not in line]
        assert len(reads) == 1 and "ttl.pkl" in reads[0], proxy.requests


def test_prune_by_age_and_crash_leftovers_in_a_folder(tmp_path: Path) -> None:
    from jangdok.location import TEMP_MARKER

    with Cache.from_settings(Settings(cache_dir=str(tmp_path / "cache"), fallback=False)) as cache:
        cache.put("old.pkl", 1)
        cache.put("new.pkl", 2)
        week_ago = time.time() - 7 * 86400
        os.utime(tmp_path / "cache" / "old.pkl", (week_ago, week_ago))
        leftover = tmp_path / "cache" / f"{TEMP_MARKER}killed"
        leftover.write_bytes(b"half")
        os.utime(leftover, (week_ago, week_ago))
        report = cache.prune(older_than=86400)
        assert report.removed == ("old.pkl",) and report.leftovers == 1
        assert list(cache.keys()) == ["new.pkl"] and not leftover.exists()


class _Listing(Store):
    """A store that only lists: a cache of many entries, without writing them."""

    name = "listing"
    capabilities = Capabilities(shared=False, range_reads=True, conditional_delete=True)

    def __init__(self, count: int) -> None:
        self.location = Location("local", "listing")
        self.items = [ObjectInfo(f"{n:07d}.pkl", 100, 1e9 + n, str(n)) for n in range(count)]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self.items if not prefix else [])

    def read(self, key: str, start: int = 0, stop: int | None = None) -> None:
        return None

    def write(self, key: str, data: Any, progress: Any = None) -> str:
        raise NotImplementedError

    def delete(self, key: str, version: str | None = None) -> bool:
        raise NotImplementedError

    def stat(self, key: str) -> None:
        return None


def test_prune_by_size_is_linear_in_the_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    count = 600_000  # the quadratic version took ~20 s here, the linear one ~1 s
    monkeypatch.setattr(jangdok.cache, "open_store", lambda location, settings: _Listing(count))
    with Cache("listing", fallback=False) as cache:
        started = time.process_time()
        report = cache.prune(max_bytes=100 * (count // 2), dry_run=True)
        seconds = time.process_time() - started
    assert report.removed == tuple(f"{n:07d}.pkl" for n in range(count // 2))
    assert seconds < 8, f"pruning {count} listed entries took {seconds:.1f} s of CPU"


def test_an_entry_saved_again_while_prune_judges_it_is_kept(cache: Cache, clock: Clock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Expired in the version prune read; saved again (without a TTL, as get_or_compute does after
    an expiry) before prune lists the entries: the new version is another entry, and stays."""
    cache.put("model.pkl", "v1", ttl=5)
    clock.now += 6
    judge = cache.entries.info

    def judged_then_saved_again(key: str, repair: bool = True) -> Any:
        found = judge(key, repair)
        cache.put("model.pkl", "v2")  # another writer, just after the header was read
        return found

    monkeypatch.setattr(cache.entries, "info", judged_then_saved_again)
    assert cache.prune().removed == ()
    assert cache.get("model.pkl") == "v2"
