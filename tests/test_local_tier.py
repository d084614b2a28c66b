"""The local tier at its edges: the trust window on an explicit clock, slow downloads, clocks
stepped back, outages (at opening and later), waiters judging a new version, and inspecting
entries through a tier.

S3 is a real SeaweedFS, reached through tests/faultproxy.py where requests are counted or a
fault is the point. Time is the store's injected clock wherever the trust window is judged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy
from helpers import s3_settings
from seaweed import SeaweedServer, free_ports

from jangdok import Cache, StoreUnavailable, parse_location
from jangdok.leases import Claim, lease_for
from jangdok.location import RESERVED_FOLDER, Location
from jangdok.stores import LOCAL_TIER, LocalStore, TieredStore
from jangdok.stores.s3 import S3Store

VALUE = {"arrays": [np.arange(50_000, dtype=np.float32) * i for i in range(3)], "label": "김치"}


class Clock:
    """The time a tier reads, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def remote(seaweed: SeaweedServer, s3_url: str) -> Iterator[S3Store]:
    """Another machine's view of the bucket: S3 itself, no tier."""
    store = S3Store(parse_location(s3_url), s3_settings(seaweed, s3_url))
    yield store
    store.close()


@pytest.fixture
def writer(seaweed: SeaweedServer, s3_url: str) -> Iterator[Cache]:
    """Another machine writing entries straight to S3."""
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        yield cache


def _tier(seaweed: SeaweedServer, s3_url: str, tmp_path: Path, clock: Clock, proxy: FaultProxy,
          trust_seconds: float = 5.0, **settings: Any) -> TieredStore:
    """S3 through ``proxy`` with a local tier in ``tmp_path/tier`` whose clock is ``clock``."""
    remote = S3Store(parse_location(s3_url), s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, **settings))
    return TieredStore(remote, LocalStore(Location("local", str(tmp_path / "tier"))), trust_seconds=trust_seconds,
                       clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def holding_first(seaweed: SeaweedServer, s3_url: str, tmp_path: Path, clock: Clock, proxy: FaultProxy,
                  remote: S3Store) -> TieredStore:
    """A tier that has just copied ``x.pkl`` (FIRST) from S3: trusted from ``clock``'s now."""
    tier = _tier(seaweed, s3_url, tmp_path, clock, proxy)
    remote.write("x.pkl", FIRST)
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)
    return tier


def _read(store: TieredStore, key: str) -> tuple[bytes, str] | None:
    """An object's bytes, and which tier served them."""
    reader = store.read(key)
    if reader is None:
        return None
    with reader:
        return reader.read(), reader.source or store.name


def _copies(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "tier").rglob("*")
                  if path.is_file() and ".jangdok" not in path.parts)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["label"] == b["label"] and all(np.array_equal(x, y) for x, y in zip(a["arrays"], b["arrays"], strict=True))


FIRST, SECOND = os.urandom(300_000), os.urandom(300_000)


# -- the trust window, on an explicit clock ---------------------------------------------------------


def test_a_remote_change_is_served_only_within_the_trust_window(
        holding_first: TieredStore, clock: Clock, proxy: FaultProxy, remote: S3Store, tmp_path: Path) -> None:
    tier = holding_first
    remote.write("x.pkl", SECOND)
    clock.advance(4.9)
    proxy.requests.clear()
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)  # trusted: no request, as configured
    assert proxy.requests == []
    clock.advance(0.1)
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)  # asked, and the new version kept
    remote.delete("x.pkl")
    clock.advance(5)
    assert _read(tier, "x.pkl") is None
    assert _copies(tmp_path) == []  # the copy of a deleted entry is dropped


def test_a_copy_is_trusted_from_when_its_download_was_requested_not_when_it_ended(
        seaweed: SeaweedServer, proxy: FaultProxy, remote: S3Store, s3_url: str, tmp_path: Path,
        clock: Clock) -> None:
    """A slow download: 4 s pass on the tier's clock while the body is on its way (the transfer
    breaks there, and resumes). The version read was current when the request left, not when
    the last byte arrived: replaced meanwhile, it may be served only until 5 s after the request."""
    tier = _tier(seaweed, s3_url, tmp_path, clock, proxy)
    remote.write("x.pkl", FIRST)
    proxy.faults.append(("cut", 100_000, lambda: clock.advance(4)))
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)
    # The first GET asks for one part; the fault fired, and the rest came with a ranged GET.
    assert len(proxy.ranges) == 2 and proxy.ranges[1].startswith("bytes=100000-")
    remote.write("x.pkl", SECOND)
    clock.advance(1.5)  # 5.5 s after the request, 1.5 s after the download ended
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)


def test_a_validation_time_in_the_future_is_not_trusted(
        holding_first: TieredStore, clock: Clock, remote: S3Store) -> None:
    tier = holding_first
    remote.write("x.pkl", SECOND)
    clock.advance(-3600)  # the clock was stepped back an hour: the copy was validated "in an hour"
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)


def test_a_revalidated_copy_is_trusted_from_when_the_question_was_asked(
        holding_first: TieredStore, clock: Clock, proxy: FaultProxy, remote: S3Store) -> None:
    tier = holding_first
    clock.advance(5)
    proxy.statuses.clear()
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)
    assert proxy.statuses == [304]  # unchanged: no body, and trusted for another window
    remote.write("x.pkl", SECOND)
    clock.advance(4.9)
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)
    clock.advance(0.1)
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)


def test_a_tier_kept_by_the_previous_version_is_asked_about_not_downloaded_again(
        holding_first: TieredStore, proxy: FaultProxy, remote: S3Store, tmp_path: Path) -> None:
    """The previous version kept a validation time as its validator file's time, not in it."""
    tier = holding_first
    [validator] = (tmp_path / "tier").rglob(".jangdok/validators/**/x.pkl")
    fields = json.loads(validator.read_text())
    validator.write_text(json.dumps({"remote": fields["remote"], "local": fields["local"]}))
    proxy.statuses.clear()
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)
    assert proxy.statuses == [304]  # asked once, without a body; the copy kept


# -- outages -----------------------------------------------------------------------------------------


def test_a_cache_opened_while_s3_is_unreachable_serves_its_warm_local_tier(
        seaweed: SeaweedServer, writer: Cache, s3_url: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    writer.put("a.pkl", VALUE)
    writer.put("b.pkl", "b")
    tier = str(tmp_path / "tier")
    with Cache.from_settings(s3_settings(seaweed, s3_url, local_dir=tier)) as warm:
        assert _same(warm.get("a.pkl"), VALUE) and warm.get("b.pkl") == "b"
    (down,) = free_ports(1)  # nothing listens there: every connection is refused
    settings = s3_settings(seaweed, s3_url, endpoint_url=f"http://127.0.0.1:{down}", local_dir=tier,
                           max_attempts=1, connect_timeout=1, read_timeout=1, total_timeout=4)
    with caplog.at_level(logging.WARNING, logger="jangdok"), Cache.from_settings(settings) as cache:
        assert _same(cache.get("a.pkl"), VALUE) and cache.get("b.pkl") == "b"
        assert cache.stats()[LOCAL_TIER].hits == 2 and cache.fallback_reason is None
        with pytest.raises(StoreUnavailable):  # what the tier has no copy of, it still asks S3 for
            cache.get("c.pkl")
    assert caplog.text.count("is unreachable") == 1
    assert "serving the copies in the local tier" in caplog.text


def test_during_an_outage_copies_are_served_without_asking_until_the_window_passes(
        seaweed: SeaweedServer, proxy: FaultProxy, remote: S3Store, s3_url: str, tmp_path: Path,
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """One failed question starts an outage: every copy is then served without asking (one
    retry budget per window, not one per read), and once the window passes S3 is asked
    again, and its answer is believed."""
    tier = _tier(seaweed, s3_url, tmp_path, clock, proxy, max_attempts=1)
    for key in ("a.pkl", "b.pkl"):
        remote.write(key, FIRST)
        assert _read(tier, key) == (FIRST, LOCAL_TIER)
    remote.write("a.pkl", SECOND)
    clock.advance(5)
    proxy.lose_answer_to(r"^GET \S*/a\.pkl ")  # the next question about a.pkl gets no answer
    with caplog.at_level(logging.INFO, logger="jangdok"):
        assert _read(tier, "a.pkl") == (FIRST, LOCAL_TIER)  # S3 failed to answer: the copy, as it is
        proxy.requests.clear()
        clock.advance(4.9)
        assert _read(tier, "b.pkl") == (FIRST, LOCAL_TIER)
        assert proxy.requests == []  # within the window: nothing asked
        clock.advance(0.1)
        assert _read(tier, "a.pkl") == (SECOND, LOCAL_TIER)  # asked again, and believed
    assert caplog.text.count("is unreachable") == 1 and "reachable again" in caplog.text


# -- waiters judging a new version ----------------------------------------------------------------


def _tiered_cache(seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> Cache:
    """A machine with a local tier that trusts its copies for a minute."""
    return Cache.from_settings(s3_settings(seaweed, s3_url, local_dir=str(tmp_path / "tier"),
                                           local_trust_seconds=60))


def _wants(inputs: int) -> Any:
    return lambda info: info.metadata == {"inputs": inputs}


def test_a_waiter_loads_the_new_version_it_saw_not_its_trusted_copy_of_the_old(
        seaweed: SeaweedServer, writer: Cache, s3_url: str, tmp_path: Path) -> None:
    """The waiter has a trusted copy of the old entry; the owner saves the new one and still
    holds its lease: the waiter must load the new one at its next look, not wait on."""
    from concurrent.futures import ThreadPoolExecutor

    writer.put("k.pkl", "old", metadata={"inputs": 1})
    waiter = _tiered_cache(seaweed, s3_url, tmp_path)
    assert waiter.get("k.pkl") == "old"
    owner = lease_for(writer.store, "k.pkl", 30)
    assert owner.try_acquire() is Claim.OWNER
    computed: list[int] = []
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(waiter.get_or_compute, "k.pkl", lambda: computed.append(1) or "recomputed",
                                  accept=_wants(2), timeout=40)
            writer.put("k.pkl", "new", metadata={"inputs": 2})
            assert waiting.result(timeout=20) == "new"  # while the owner still holds its lease
    finally:
        owner.release()
    assert computed == []


def test_a_waiter_that_takes_the_freed_lease_judges_the_new_version_not_its_copy(
        seaweed: SeaweedServer, writer: Cache, s3_url: str, tmp_path: Path) -> None:
    """The owner saves and releases between the waiter's look (which saw the old version) and
    its next try at the lease: the waiter then holds the lease, and must find the new entry."""
    writer.put("k.pkl", "old", metadata={"inputs": 1})
    waiter = _tiered_cache(seaweed, s3_url, tmp_path)
    assert waiter.get("k.pkl") == "old"
    owner = lease_for(writer.store, "k.pkl", 30)
    assert owner.try_acquire() is Claim.OWNER
    judged: list[Any] = []

    def accept(info: Any) -> bool:
        judged.append(info.metadata)
        if len(judged) == 2:  # the waiter's first look while the owner computes: the owner finishes now
            writer.put("k.pkl", "new", metadata={"inputs": 2})
            owner.release()
        return info.metadata == {"inputs": 2}

    assert waiter.get_or_compute("k.pkl", lambda: "recomputed", accept=accept, timeout=40) == "new"
    assert judged[:2] == [{"inputs": 1}, {"inputs": 1}] and waiter.stats()["S3"].computed == 0


# -- inspecting through a tier ----------------------------------------------------------------------


def test_verify_and_stat_through_a_tier_read_s3_and_copy_nothing(seaweed: SeaweedServer, proxy: FaultProxy,
                                                                 writer: Cache, s3_url: str, tmp_path: Path) -> None:
    for index in range(3):
        writer.put(f"k{index}.pkl", VALUE, metadata={"version": 1})
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint,
                                            local_dir=str(tmp_path / "tier"), local_trust_seconds=60))
    assert _same(cache.get("k0.pkl"), VALUE)  # the working set: one trusted copy
    writer.put("k0.pkl", "replaced", metadata={"version": 2})
    proxy.requests.clear()
    verdicts = [cache.verify(f"k{index}.pkl") for index in range(3)]
    assert [verdict.status for verdict in verdicts] == ["ok"] * 3
    assert verdicts[0].info is not None and verdicts[0].info.metadata == {"version": 2}  # S3's entry, not the copy
    info = cache.stat("k0.pkl")
    assert info is not None and info.metadata == {"version": 2} and info.store == "S3"
    asked = {line.rpartition("/")[2] for line in proxy.requests if line.startswith("GET")}
    assert asked == {"k0.pkl", "k1.pkl", "k2.pkl"}  # each check asked S3
    assert _copies(tmp_path) == ["k0.pkl"]  # nothing copied in, nothing evicted


# -- deleting through a tier --------------------------------------------------------------------------


def _validators(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "tier").rglob(".jangdok/validators/**/x.pkl"))


def _copy_version(tier: TieredStore) -> str:
    """The version a read of the tier's copy of ``x.pkl`` answers with (what a reader that
    finds damage in it deletes)."""
    reader = tier.read("x.pkl")
    assert reader is not None and reader.source == LOCAL_TIER
    with reader:
        return reader.info.version


def test_deleting_an_entry_deletes_it_in_s3_and_drops_the_tiers_copy(holding_first: TieredStore,
                                                                     remote: S3Store, tmp_path: Path) -> None:
    """Within the trust window too: a copy left behind would be served as the deleted entry."""
    tier = holding_first
    assert tier.delete("x.pkl")
    assert remote.stat("x.pkl") is None
    assert _copies(tmp_path) == [] and _validators(tmp_path) == []
    assert _read(tier, "x.pkl") is None


def test_a_damaged_copy_is_deleted_alone_and_its_version_then_read_from_s3(
        holding_first: TieredStore, remote: S3Store, clock: Clock, tmp_path: Path) -> None:
    """A reader found damage in the copy (the version it read was the copy's): the copy and its
    validator go, S3's entry stays, and that S3 version is then served from S3, not copied
    again (a reader confirms damage there, not in a fresh copy). A new version is copied."""
    tier = holding_first
    assert tier.delete("x.pkl", version=_copy_version(tier))
    assert _copies(tmp_path) == [] and _validators(tmp_path) == []
    assert remote.stat("x.pkl") is not None
    assert _read(tier, "x.pkl") == (FIRST, tier.name)
    assert _copies(tmp_path) == []
    remote.write("x.pkl", SECOND)
    clock.advance(10)
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)
    assert _copies(tmp_path) == ["x.pkl"]


def test_a_copy_replaced_since_it_was_read_is_not_deleted_as_damaged(
        holding_first: TieredStore, remote: S3Store, clock: Clock, tmp_path: Path) -> None:
    """Damage found in a copy that has been replaced since (a new version copied): the delete
    of the version read removes nothing, and the new copy is still served."""
    tier = holding_first
    damaged = _copy_version(tier)
    remote.write("x.pkl", SECOND)
    clock.advance(10)
    assert _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)
    assert not tier.delete("x.pkl", version=damaged)
    assert _copies(tmp_path) == ["x.pkl"] and _read(tier, "x.pkl") == (SECOND, LOCAL_TIER)


def test_a_damaged_copy_whose_validator_another_process_removed_is_still_deleted(
        holding_first: TieredStore, remote: S3Store, tmp_path: Path) -> None:
    tier = holding_first
    damaged = _copy_version(tier)
    [validator] = _validators(tmp_path)
    validator.unlink()  # another process dropped the copy's validator meanwhile
    assert tier.delete("x.pkl", version=damaged)
    assert _copies(tmp_path) == [] and remote.stat("x.pkl") is not None
    assert _read(tier, "x.pkl") == (FIRST, LOCAL_TIER)  # nothing known against S3's version: copied again


def test_a_fallback_tier_deletes_in_its_folder(tmp_path: Path) -> None:
    """No remote (S3 could not be opened): the local folder is the store, versions and all."""
    tier = TieredStore(None, LocalStore(Location("local", str(tmp_path / "fallback"))))
    first = tier.write("x.pkl", FIRST)
    tier.write("x.pkl", SECOND)
    assert not tier.delete("x.pkl", version=first)  # replaced since: kept
    assert _read(tier, "x.pkl") == (SECOND, tier.name)
    assert tier.delete("x.pkl") and _read(tier, "x.pkl") is None


# -- links planted in the tier's folder ---------------------------------------------------------------


@pytest.mark.parametrize("planted", ["its own folder", "its eviction lock"])
def test_links_planted_in_the_tier_never_lead_its_own_files_outside(planted: str, seaweed: SeaweedServer,
                                                                   proxy: FaultProxy, remote: S3Store, s3_url: str,
                                                                   tmp_path: Path) -> None:
    """Validators, the usage count and the eviction lock live under the tier's reserved folder.
    A link where that folder goes, or where the lock goes, must not make the tier write (or
    create) anything outside: it serves from S3 instead, or evicts nothing this time."""
    outside = tmp_path / "outside"
    outside.mkdir()
    reserved = tmp_path / "tier" / RESERVED_FOLDER
    if planted == "its own folder":
        reserved.parent.mkdir()
        os.symlink(outside, reserved)
    else:
        reserved.mkdir(parents=True)
        os.symlink(outside / "created-by-the-tier", reserved / "evict.lock")
    tier = TieredStore(S3Store(parse_location(s3_url), s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)),
                       LocalStore(Location("local", str(tmp_path / "tier"))), max_bytes=10_000_000, clock=Clock())
    remote.write("x.pkl", FIRST)
    assert _read(tier, "x.pkl")[0] == FIRST
    tier.write("y.pkl", SECOND)
    assert _read(tier, "y.pkl")[0] == SECOND and _read(tier, "x.pkl")[0] == FIRST
    assert list(outside.iterdir()) == []
