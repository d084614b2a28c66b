"""Expiry and pruning on both backends: entries past their TTL are misses, prune removes what
is expired, old or over a size bound (oldest first), and a dry run only reports."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jangdok import Cache, InvalidValue, Settings


def test_an_entry_past_its_ttl_is_a_miss(cache: Cache) -> None:
    info = cache.put("soon.pkl", "fresh", ttl=0.4)
    cache.put("forever.pkl", "kept")
    assert info.expires_at is not None and info.expires_at - info.created_at == pytest.approx(0.4)
    assert cache.get("soon.pkl") == "fresh"
    time.sleep(0.5)
    assert cache.get("soon.pkl", "miss") == "miss"
    assert cache.exists("soon.pkl"), "expired entries are left for prune or the next put"
    assert cache.stat("soon.pkl").expires_at == info.expires_at
    assert cache.get("forever.pkl") == "kept"
    cache.put("soon.pkl", "again")
    assert cache.get("soon.pkl") == "again"


def test_the_ttl_setting_is_the_default_and_bad_ttls_are_refused(cache_url: str, make_settings) -> None:
    with Cache.from_settings(make_settings(cache_url, ttl=0.3)) as cache:
        cache.put("a.pkl", 1)
        assert cache.get("a.pkl") == 1
        time.sleep(0.4)
        assert cache.get("a.pkl") is None
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(InvalidValue, match="ttl for key 'b.pkl' must be a positive number"):
                cache.put("b.pkl", 1, ttl=bad)


def test_prune_removes_expired_then_oldest_beyond_the_bound(cache: Cache) -> None:
    cache.put("expired.pkl", b"x" * 1000, ttl=0.2)
    for name in ("old.pkl", "middle.pkl", "new.pkl"):
        cache.put(name, b"y" * 10_000)
        time.sleep(1.1)  # S3 times have one-second resolution
    sizes = {found.key: found.size for found in cache.store.list()}
    bound = sizes["middle.pkl"] + sizes["new.pkl"]
    report = cache.prune(max_bytes=bound, dry_run=True)
    assert set(report.removed) == {"expired.pkl", "old.pkl"} and report.dry_run
    assert sorted(cache.keys()) == ["expired.pkl", "middle.pkl", "new.pkl", "old.pkl"]
    report = cache.prune(max_bytes=bound)
    assert set(report.removed) == {"expired.pkl", "old.pkl"}
    assert report.bytes_freed == sizes["expired.pkl"] + sizes["old.pkl"]
    assert sorted(cache.keys()) == ["middle.pkl", "new.pkl"]
    assert cache.prune(older_than=0).removed and list(cache.keys()) == []


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
