"""The inspection and maintenance commands on many entries: listings only where nothing needs
an entry read, deletes in batches (or, where the server ignores batch pins, concurrent
versioned deletes), bounded concurrency with no thread left after, listings consumed as they
page (never held whole), and the same output as before, in the same order.

The counts of entries are small (a thousand or two: two listing pages); the commands run in
this process, on SeaweedFS (requests counted through a real proxy), moto and a folder.
"""

from __future__ import annotations

import io
import json
import random
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import BUCKET
from seaweed import SeaweedServer, credentials_env

import jangdok.bulk
import jangdok.cache
from jangdok import Cache
from jangdok.bulk import SortedListing, in_order
from jangdok.cli import main
from jangdok.cli.context import as_json, json_pieces
from jangdok.location import Location
from jangdok.stores import Capabilities, LocalStore, ObjectInfo, Store
from jangdok.stores.s3 import S3Store
from jangdok.stores.s3.capabilities import ProbedCapabilities

CONCURRENCY = 4


def _fill(server: SeaweedServer, prefix: str, count: int, folder: str = "e") -> None:
    """``count`` objects under ``prefix + folder/``, written around jangdok (not entries: what
    is tested here never reads them)."""
    client = server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda number: client.put_object(Bucket=BUCKET, Key=f"{prefix}{folder}/{number:05d}.pkl",
                                                       Body=b"entry"), range(count)))


@pytest.fixture
def through_proxy(seaweed: SeaweedServer, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The command's environment: the cache at ``s3_url``, reached through a recording proxy."""
    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    for name, value in {**credentials_env(seaweed), "AWS_ENDPOINT_URL": proxy.endpoint, "CACHE_DIR": s3_url,
                        "JANGDOK_CONCURRENCY": str(CONCURRENCY), "JANGDOK_FALLBACK": "0"}.items():
        monkeypatch.setenv(name, value)
    yield proxy
    proxy.close()


def _threads() -> set[threading.Thread]:
    """This process's threads, but the test proxy's (one per connection, ending on their own)."""
    return {thread for thread in threading.enumerate()
            if getattr(getattr(thread, "_target", None), "__module__", None) != "faultproxy"}


def _command(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The command run in this process (its threads must be gone when it returns); its JSON."""
    capsys.readouterr()
    before = _threads()
    assert main([*argv, "--json"]) in (0, 3), capsys.readouterr().err
    assert _threads() <= before, "a thread outlived the command"
    return json.loads(capsys.readouterr().out)


def _is_listing(line: str) -> bool:
    return line.startswith("GET ") and ("list-type=2" in line or "?uploads" in line)


def test_prune_lists_and_reads_nothing_without_ttls_and_deletes_in_batches(
        seaweed: SeaweedServer, s3_prefix: str, through_proxy: FaultProxy, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing to remove: listings only (of the entries, a page per 1000). Everything to
    remove: the same, and one DeleteObjects per 1000 entries, never a HEAD or a DELETE each.
    (``rm --prefix``'s batches: see test_cli.)"""
    _fill(seaweed, s3_prefix, 1100)
    everything = f"prefix={s3_prefix.replace('/', '%2F')}"
    for argv in (["prune", "--dry-run"], ["prune", "--yes"], ["prune", "--older-than", "30d", "--yes"],
                 ["prune", "--older-than", "0s", "--yes"]):
        through_proxy.requests.clear()
        assert len(_command(capsys, *argv)["removed"]) == (1100 if "0s" in argv else 0)
        requests = through_proxy.requests
        listings = [line for line in requests if _is_listing(line)]
        pages = [line for line in listings if "list-type=2" in line and (everything + "&") in line + "&"]
        assert len(pages) == 1 + 2, requests  # the opening's one-key check, and the entries' two pages
        # and the expiry markers; a real run also lists the multipart uploads, the probes left
        # by crashes and the leases
        assert len(listings) == len(pages) + 1 + (0 if "--dry-run" in argv else 3), requests
        batches = [line for line in requests if line.startswith("POST ") and line.endswith("?delete")]
        probes = [line for line in requests if line.startswith("PUT ") and ".jangdok-tmp-probe-" in line]
        assert len(batches) == (2 if "0s" in argv else 0) + len(probes), requests  # a probe tries one too
        assert len(requests) == len(listings) + len(batches) + 2 * len(probes), requests  # its PUT and DELETE
    assert list(Cache(f"s3://{BUCKET}/{s3_prefix}", fallback=False).keys()) == []


def test_where_batches_are_not_pinned_deletes_are_concurrent_and_versioned(moto: SeaweedServer, s3_prefix: str,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A server that ignores the ETags of DeleteObjects (moto before 5.2.6 did; newer ones keep
    them, so the probe's answer is set here): each key is deleted on its own, pinned to the
    version listed (an entry rewritten after the listing stays), ``concurrency`` at a time."""
    monkeypatch.setattr(ProbedCapabilities, "conditional_batch_delete", property(lambda self: False))
    _fill(moto, s3_prefix, 60)
    for name, value in {**credentials_env(moto), "CACHE_DIR": f"s3://{BUCKET}/{s3_prefix}",
                        "JANGDOK_CONCURRENCY": str(CONCURRENCY), "JANGDOK_FALLBACK": "0"}.items():
        monkeypatch.setenv(name, value)
    rewritten = f"{s3_prefix}e/00007.pkl"
    listed = SortedListing.add

    def add_then_rewrite(self: SortedListing, item: ObjectInfo) -> None:
        listed(self, item)
        if item.key == "e/00007.pkl":  # another writer, once the listing has passed it
            moto.client().put_object(Bucket=BUCKET, Key=rewritten, Body=b"a newer entry")

    monkeypatch.setattr(SortedListing, "add", add_then_rewrite)
    _, most = _bounded(monkeypatch, S3Store, "delete")
    result = _command(capsys, "rm", "--prefix", "e/", "--yes")
    assert result["kept"] == ["e/00007.pkl"] and len(result["removed"]) == 59
    assert result["removed"] == sorted(result["removed"])
    assert 2 <= most() <= CONCURRENCY
    assert moto.client().get_object(Bucket=BUCKET, Key=rewritten)["Body"].read() == b"a newer entry"


def _bounded(monkeypatch: pytest.MonkeyPatch, kind: type, method: str) -> tuple[Any, Callable[[], int]]:
    """Wrap ``kind.method`` to count the calls running at once: the first waits for a second
    (a minute at most: if calls never overlap, it fails), the rest pass. Returns the original
    and the most that ran at once."""
    original = getattr(kind, method)
    lock = threading.Lock()
    running, most = [0], [0]
    two = threading.Event()

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] >= 2:
                two.set()
        try:
            if not two.wait(timeout=60):
                raise AssertionError(f"{method} calls never ran at the same time")
            return original(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(kind, method, counted)
    return original, lambda: most[0]


def test_ls_long_and_verify_on_s3_keep_at_most_concurrency_requests_in_flight(
        seaweed: SeaweedServer, s3_url: str, through_proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str]) -> None:
    with Cache(s3_url, endpoint_url=seaweed.endpoint, **_keys(seaweed)) as cache:
        for number in range(40):
            cache.put(f"k{number:02d}.pkl", number)
    rows = _command(capsys, "ls", "-l")
    assert [row["key"] for row in rows] == [f"k{number:02d}.pkl" for number in range(40)]
    assert all(row["format"] == "jangdok v2 pickle" for row in rows)
    # boto3 opens a connection per request in flight and keeps it: never more than the workers
    # (and the one that listed, which a worker may reuse)
    assert through_proxy.connections <= CONCURRENCY + 1
    through_proxy.connections = 0
    assert _command(capsys, "verify") == {"counts": {"ok": 40}, "problems": []}
    assert through_proxy.connections <= CONCURRENCY + 1


def _keys(server: SeaweedServer) -> dict[str, Any]:
    access_key, secret_key = server.identity
    return {"access_key_id": access_key, "secret_access_key": secret_key, "region": "us-east-1", "fallback": False}


def test_ls_long_and_verify_in_a_folder_read_concurrently_within_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cache"
    with Cache(str(folder), fallback=False) as cache:
        for number in range(30):
            cache.put(f"k{number:02d}.pkl", number)
    monkeypatch.setenv("CACHE_DIR", str(folder))
    monkeypatch.setenv("JANGDOK_CONCURRENCY", str(CONCURRENCY))
    for argv, expected in ((["ls", "-l"], None), (["verify"], {"counts": {"ok": 30}, "problems": []})):
        read, most = _bounded(monkeypatch, LocalStore, "read")
        result = _command(capsys, *argv)
        monkeypatch.setattr(LocalStore, "read", read)
        assert 2 <= most() <= CONCURRENCY, argv
        if expected is None:
            assert [row["key"] for row in result] == [f"k{n:02d}.pkl" for n in range(30)]
        else:
            assert result == expected


def test_listings_larger_than_a_run_come_out_as_before(cache: Cache, cache_url: str, backend: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str],
                                                       request: pytest.FixtureRequest) -> None:
    """Sorted through spilled runs (a run of 3 entries here), ``ls`` lists by name, size or age
    with ties in key order, ``verify`` and ``rm --prefix`` report in key order: as a sort in
    memory would."""
    monkeypatch.setattr(jangdok.bulk, "RUN", 3)
    monkeypatch.setattr(jangdok.bulk, "_FAN_IN", 2)
    names = [f"{folder}/{name}.pkl" for folder in ("a", "a-b", "b") for name in ("x", "y.z", "김치")]
    rng = random.Random(5)
    for key in rng.sample(names, len(names)):
        cache.put(key, "v" * rng.choice([1, 1000, 2000]))
    monkeypatch.setenv("CACHE_DIR", cache_url)
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")
    if backend == "s3":
        for name, value in credentials_env(request.getfixturevalue("seaweed")).items():
            monkeypatch.setenv(name, value)
    listed = [found for found in cache.store.list() if not found.key.startswith(".jangdok")]
    expected = {
        ("name",): sorted(found.key for found in listed),
        ("size", "--reverse"): [found.key for found in sorted(listed, key=lambda f: (f.size, f.key), reverse=True)],
        ("age",): [found.key for found in sorted(listed, key=lambda f: (-f.modified, f.key))],
    }
    for (order, *rest), keys in expected.items():
        rows = _command(capsys, "ls", "--sort", order, *rest)
        assert [row["key"] for row in rows] == keys, order
    assert _command(capsys, "verify")["counts"] == {"ok": 9}
    assert _command(capsys, "rm", "--prefix", "a", "--yes") == {"removed": sorted(names)[:6], "missing": [],
                                                                "kept": []}


def test_the_json_written_as_it_comes_is_the_document_as_before() -> None:
    documents: list[Any] = [[], {}, [{"key": "김치", "metadata": {"x": [1, 2]}, "n": None}],
                            {"removed": ["a", "b"], "missing": [], "kept": []}, {"counts": {"ok": 1}, "problems": []}]
    for document in documents:
        assert "".join(json_pieces(document)) == as_json(document)
        streamed = iter(document) if isinstance(document, list) else {
            name: iter(value) if isinstance(value, list) else value for name, value in document.items()}
        assert "".join(json_pieces(streamed)) == as_json(document)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_sorted_listing_spilled_and_merged_sorts_as_sorted_does(monkeypatch: pytest.MonkeyPatch,
                                                                  reverse: bool) -> None:
    monkeypatch.setattr(jangdok.bulk, "RUN", 5)
    monkeypatch.setattr(jangdok.bulk, "_FAN_IN", 3)
    monkeypatch.setattr(jangdok.bulk, "_CHUNK", 2)
    rng = random.Random(1)
    items = [ObjectInfo(f"k{number}", rng.randrange(10), 0.0, str(number)) for number in range(200)]
    with SortedListing(lambda item: item.size, reverse=reverse) as listing:  # many ties: stability shows
        listing.extend(items)
        assert listing.count == 200
        assert list(listing) == sorted(items, key=lambda item: item.size, reverse=reverse)


def test_in_order_bounds_the_calls_running_and_leaves_no_thread() -> None:
    lock = threading.Lock()
    running, most = [0], [0]
    meeting = threading.Barrier(3, timeout=60)

    def call(number: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if number < 3:
            meeting.wait()  # three at once, or the barrier breaks
        with lock:
            running[0] -= 1
        return number * 2

    before = _threads()
    taken = []
    for result in in_order(call, iter(range(50)), 3):
        taken.append(result)
    assert taken == [number * 2 for number in range(50)] and most[0] == 3
    assert _threads() <= before
    stopped = in_order(call, range(50), 3)
    next(stopped)
    stopped.close()  # stopping early joins the threads as well
    assert _threads() <= before


class _Listing(Store):
    """A store of many entries that only lists (a generator, as S3's pages come) and can delete
    them, and says how far the listing had got when each delete came."""

    name = "listing"
    capabilities = Capabilities(shared=False, range_reads=True, conditional_delete=True)

    def __init__(self, count: int) -> None:
        self.location = Location("local", "listing")
        self.count = count
        self.listed = 0
        self.deleted_while_listed: list[tuple[int, int]] = []

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix:
            return
        for number in range(self.count):
            self.listed = number + 1
            yield ObjectInfo(f"{number:07d}.pkl", 100, 1e9 + number, str(number))

    def delete(self, key: str, version: str | None = None) -> bool:
        self.deleted_while_listed.append((len(self.deleted_while_listed) + 1, self.listed))
        return True

    def read(self, key: str, start: int = 0, stop: int | None = None) -> None:
        return None

    def write(self, key: str, data: Any, progress: Any = None) -> str:
        raise NotImplementedError

    def stat(self, key: str) -> None:
        return None


def _with_store(monkeypatch: pytest.MonkeyPatch, store: Store) -> Cache:
    """A cache on ``store``: the commands' caches too (``CACHE_DIR``)."""
    monkeypatch.setattr(jangdok.cache, "open_store", lambda location, settings: store)
    monkeypatch.setenv("CACHE_DIR", "listing")
    return Cache("listing", fallback=False, concurrency=CONCURRENCY)


def test_prune_progress_counts_as_the_listing_goes_and_totals_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int | None]] = []
    with _with_store(monkeypatch, _Listing(30)) as cache:
        cache.prune(dry_run=True, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, None) for done in range(1, 31)] + [(30, 30)]


def test_prune_removes_entries_while_the_listing_still_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Listing(500)
    with _with_store(monkeypatch, store) as cache:
        assert len(cache.prune(older_than=0).removed) == 500
    # Each delete came before the listing got further than the workers' queue ahead of it.
    assert all(listed <= deleted + 2 * CONCURRENCY + 1 for deleted, listed in store.deleted_while_listed)


HELD = 340
"""Bytes a listed entry (an ObjectInfo, its key and version) takes, held."""


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> int:
    """Sorted listings hold at most this many entries (runs of 500, merged 4 at a time in
    pieces of 50), so that a few tens of thousands are enough to tell held from streamed."""
    monkeypatch.setattr(jangdok.bulk, "RUN", 500)
    monkeypatch.setattr(jangdok.bulk, "_FAN_IN", 4)
    monkeypatch.setattr(jangdok.bulk, "_CHUNK", 50)
    return 500 + 4 * 50


def _peak(run: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        return run(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("max_bytes", [None, 100 * (40_000 - 10)], ids=["no bound", "size bound"])
def test_prune_of_many_entries_holds_none_of_their_listing(monkeypatch: pytest.MonkeyPatch, small_runs: int,
                                                           max_bytes: int | None) -> None:
    """Pruning (by size too, which sorts the entries kept by age) holds a bounded number of
    entries, not the listing: a third of what holding it would take is plenty."""
    count = 40_000
    with _with_store(monkeypatch, _Listing(count)) as cache:
        report, peak = _peak(lambda: cache.prune(max_bytes=max_bytes, dry_run=True))
    assert len(report.removed) == (0 if max_bytes is None else 10)
    assert peak < count * HELD / 3, f"{peak / 2**20:.1f} MB"


class _Keys(io.TextIOBase):
    """Where a command writes: counts the lines, keeps nothing."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)


def test_ls_of_many_entries_holds_none_of_their_listing(monkeypatch: pytest.MonkeyPatch, small_runs: int) -> None:
    """Sorted through spilled runs, and written as they come."""
    count = 20_000
    out = _Keys()
    _with_store(monkeypatch, _Listing(count))
    monkeypatch.setattr(sys, "stdout", out)
    status, peak = _peak(lambda: main(["ls"]))
    assert status == 0 and out.lines == count + 1  # and the total
    assert peak < count * HELD / 3, f"{peak / 2**20:.1f} MB"
