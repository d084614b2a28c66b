"""Compute once at the edges: skewed clocks, races for a dead owner's lease, long computations,
values that cannot be saved, folders that cannot be written, and keys at the length limits.

S3 is a real SeaweedFS; machines are real processes (tests/compute_worker.py) or threads with
caches of their own.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fleet import computations, fleet_env, member, results, start, wait_for
from helpers import s3_settings
from seaweed import SeaweedServer

from jangdok import Cache, Settings, StoreUnavailable, WaitTimeout, parse_location
from jangdok.leases import Claim, lease_for, remove_stale
from jangdok.location import RESERVED_FOLDER
from jangdok.stores import Capabilities
from jangdok.stores.s3 import S3Store


def _reserved(cache: Cache) -> list[str]:
    """jangdok's own objects in the store (leases, lock files, marks), as its listing shows them."""
    return sorted(found.key for found in cache.store.list(RESERVED_FOLDER + "/"))


# -- clocks ------------------------------------------------------------------------------------


def test_a_cleaner_whose_clock_runs_ahead_never_removes_a_live_lease(seaweed: SeaweedServer, s3_url: str,
                                                                      tmp_path: Path) -> None:
    """The issue's case: 3 s leases, the cleaner's clock 40 s ahead. The owner renews every
    second; the cleaner may judge its lease only by the server's clock."""
    log = tmp_path / "computed.log"
    owner = start(fleet_env(seaweed, s3_url, JANGDOK_LEASE_SECONDS="3"), "k.pkl", log, 0, "hang")
    try:
        wait_for(log)
        cache = Cache.from_settings(s3_settings(seaweed, s3_url, lease_seconds=3))
        ahead = lambda: time.time() + 40  # noqa: E731 - the cleaner's clock, and only the cleaner's
        for _ in range(3):  # over two lifetimes of renewals
            assert remove_stale(cache.store, 0, 3, clock=ahead) == 0
            time.sleep(1)
        with pytest.raises(WaitTimeout):  # still held by its owner: nobody else computes
            cache.get_or_compute("k.pkl", lambda: "a second computation", timeout=1)
        assert computations(log) == [str(owner.pid)]
    finally:
        owner.kill()
        owner.wait()


# -- taking over a dead owner's lease ------------------------------------------------------------


def _store(conditions: str, url: str, settings: Settings) -> S3Store:
    """SeaweedFS; with ``unknown`` conditions, reported as a server whose conditional writes
    could not be probed: leases must stay safe where that is unknown (the server does enforce
    them, so a lease that skipped its condition would show)."""
    store = S3Store(parse_location(url), settings)
    if conditions == "unknown":
        store.capabilities = Capabilities(shared=True, range_reads=True, conditional_delete=True,
                                          conditional_write=None)
    return store


@pytest.mark.parametrize("conditions", ["known", "unknown"])
def test_waiters_racing_to_take_over_a_dead_owners_lease_exactly_one_wins(
        conditions: str, seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    log = tmp_path / "computed.log"
    owner = start(fleet_env(seaweed, s3_url, JANGDOK_LEASE_SECONDS="1"), "k.pkl", log, 0, "hang")
    wait_for(log)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    settings = s3_settings(seaweed, s3_url)
    stores = [_store(conditions, s3_url, settings) for _ in range(6)]
    leases = [lease_for(store, "k.pkl", 1.0) for store in stores]
    assert [lease.try_acquire() for lease in leases] == [Claim.WAITER] * 6  # each sees the dead lease
    time.sleep(1.5)  # a lifetime unrenewed, on every waiter's clock
    together = threading.Barrier(len(leases))

    def take_over(index: int) -> Claim:
        together.wait(timeout=30)
        return leases[index].try_acquire()

    with ThreadPoolExecutor(len(leases)) as pool:
        claims = list(pool.map(take_over, range(len(leases))))
    try:
        assert claims.count(Claim.OWNER) == 1, claims
        assert claims.count(Claim.WAITER) == 5
    finally:
        for lease, claim in zip(leases, claims, strict=True):
            if claim is Claim.OWNER:
                lease.release()
        for store in stores:
            store.close()


def test_a_computation_lasting_several_lifetimes_is_never_taken_over_while_renewed(
        seaweed: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    """4 s leases (renewed every 1.3 s), a 13 s computation, and waiters watching it all along:
    three waiting processes, and this test, which tries to take the lease as a waiter does
    every half second until the entry appears. A waiter takes over only a version it saw
    unchanged for a whole lifetime, which a renewed lease never is."""
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, lease_seconds=4))
    watcher = lease_for(cache.store, "k.pkl", 4)  # made (and its store probed) before the clock starts
    env = fleet_env(seaweed, s3_url, JANGDOK_LEASE_SECONDS="4")
    log = tmp_path / "computed.log"
    owner = start(env, "k.pkl", log, 13)
    wait_for(log)
    waiters = [start(env, "k.pkl", log, 0) for _ in range(3)]
    started, claims = time.monotonic(), []
    while not cache.exists("k.pkl"):
        claims.append(watcher.try_acquire())
        if claims[-1] is not Claim.WAITER:
            watcher.release()
            break
        time.sleep(0.5)
    watched = time.monotonic() - started
    found = results([owner, *waiters])
    assert set(claims) == {Claim.WAITER} and watched > 8, (claims, watched)  # two lifetimes and more
    assert computations(log) == [str(owner.pid)]
    assert {result["value"]["by"] for result in found} == {owner.pid}
    assert sum(result["stats"]["S3"]["lease_takeovers"] for result in found) == 0


# -- values that cannot be saved, folders that cannot be written ----------------------------------


def test_waiters_behind_a_value_that_cannot_be_saved_compute_at_once(cache: Cache) -> None:
    """Four callers of one key whose value cannot be pickled. The first computes and cannot
    save; the three others must then compute together, not one after another: each waits in
    its computation until all three are in theirs."""
    calls: list[int] = []
    guard = threading.Lock()
    waiters_together = threading.Barrier(3, timeout=30)

    def compute() -> Any:
        with guard:
            calls.append(threading.get_ident())
            first = len(calls) == 1
        if first:
            time.sleep(0.5)  # the owner; its waiters wait meanwhile (or meet its mark later)
        else:
            waiters_together.wait()
        return threading.Lock()  # cannot be pickled: never stored

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get_or_compute, "k.pkl", compute) for _ in range(4)]
        values = [future.result(timeout=120) for future in futures]
    assert len(calls) == 4 and all(hasattr(value, "acquire") for value in values)
    assert not cache.exists("k.pkl") and _reserved(cache) != []  # the mark the owner left
    # The next caller whose value can be saved computes at once, saves it and removes the mark:
    # the key is coordinated again.
    assert cache.get_or_compute("k.pkl", lambda: "saved") == "saved"
    assert _reserved(cache) == []
    assert cache.get_or_compute("k.pkl", lambda: "not again") == "saved"
    # Coordinated again: once the entry is gone, two callers missing it compute it once.
    cache.delete("k.pkl")
    _two_callers_missing_it_compute_it_once(cache)


def _two_callers_missing_it_compute_it_once(cache: Cache) -> None:
    computed: list[int] = []

    def slow() -> str:
        computed.append(threading.get_ident())
        time.sleep(0.5)
        return "computed once"

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(cache.get_or_compute, "k.pkl", slow, timeout=20) for _ in range(2)]
        assert [future.result(timeout=120) for future in futures] == ["computed once"] * 2
    assert len(computed) == 1


def test_two_callers_behind_a_mark_that_both_save_leave_the_key_coordinated(cache: Cache) -> None:
    """Two callers meet an unsaved mark, compute together and both save: the first removes
    the mark, the second finds none. Neither may keep the key's lock, nor leave a lock file
    behind: the key is coordinated again, and its next miss is computed once, at once."""
    cache.get_or_compute("k.pkl", threading.Lock)  # cannot be saved: its owner leaves the mark
    assert not cache.exists("k.pkl") and _reserved(cache) != []
    together = threading.Barrier(2, timeout=30)

    def saved() -> str:
        together.wait()  # both met the mark before either saves
        return "saved"

    with ThreadPoolExecutor(2) as pool:
        assert [future.result(timeout=120) for future in [pool.submit(cache.get_or_compute, "k.pkl", saved)
                                                          for _ in range(2)]] == ["saved"] * 2
    assert _reserved(cache) == []
    cache.delete("k.pkl")
    _two_callers_missing_it_compute_it_once(cache)
    assert _reserved(cache) == []


def test_a_lock_that_fails_for_another_reason_stops_the_call_and_computes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file that cannot be used (read-only, a link, not a file) means computing without
    coordinating; any other error locking it (here the disk failing) is the store's error: the
    call stops with it and says where, rather than computing uncoordinated or going on unlocked."""
    cache = Cache(str(tmp_path / "cache"), fallback=False)

    def failing_disk(fd: int, operation: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("jangdok.filelock.fcntl.flock", failing_disk)
    computed: list[int] = []
    with pytest.raises(StoreUnavailable, match="Local error locking .*report.pkl.*Input/output error"):
        cache.get_or_compute("report.pkl", lambda: computed.append(1) or 42)
    assert computed == [] and not cache.exists("report.pkl")


def _read_only_mount(folder: Path) -> list[str]:
    """A command prefix that runs its command where ``folder`` is a read-only mount of itself
    (a mount namespace of its own, so nothing outside the command sees it)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a read-only file system")
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        probe = subprocess.run([*prefix, "sh", "-c", 'mount --bind -o ro "$0" "$0" && ! touch "$0/probe" 2>/dev/null',
                                str(folder)], capture_output=True)
        if probe.returncode == 0:
            return [*prefix, "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    pytest.skip("cannot make a read-only mount here (no mount namespaces)")


def test_on_a_read_only_file_system_a_miss_is_computed_without_coordinating(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    Cache(str(folder)).put("kept.pkl", "stored before")
    script = ("import logging, sys\nfrom jangdok import Cache\nlogging.basicConfig(level=logging.WARNING)\n"
              "cache = Cache(sys.argv[1], fallback=False)\n"
              "print(cache.get_or_compute('kept.pkl', lambda: 'recomputed'))\n"
              "print(cache.get_or_compute('new.pkl', lambda: 'computed'))\n")
    run = subprocess.run([*_read_only_mount(folder), sys.executable, "-c", script, str(folder)],
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["stored", "before", "computed"]
    assert "Read-only file system" in run.stderr  # a real EROFS, not a permission check
    assert "computing without coordinating" in run.stderr and "could not save it" in run.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["kept.pkl"]


# -- keys at the length limits ---------------------------------------------------------------------


def _longest_key(cache: Cache) -> str:
    """A key as long as ``put`` accepts: on S3 1024 bytes with the prefix, of 255-byte segments;
    in a folder, a last segment of 255 bytes, the longest a file name can be."""
    if not cache.location.is_s3:
        return "deep/" + "k" * 251 + ".pkl"
    room = 1024 - len(cache.location.prefix.encode())
    return "/".join(["a" * 255, "b" * 255, "c" * 255, "d" * (room - 3 * 256)])


def test_a_key_at_the_length_limits_is_computed_once(cache: Cache) -> None:
    key = _longest_key(cache)
    if cache.location.is_s3:
        assert len((cache.location.prefix + key).encode()) == 1024
    else:
        assert len(key.rpartition("/")[2].encode()) == 255
    cache.put(key, "put")
    assert cache.get(key) == "put" and cache.delete(key)
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        time.sleep(0.3)
        return "computed"

    with ThreadPoolExecutor(3) as pool:
        values = list(pool.map(lambda _: cache.get_or_compute(key, compute), range(3)))
    assert values == ["computed"] * 3 and calls == [1]
    assert _reserved(cache) == []  # its lease (lock file) is gone with it


def test_a_dead_owners_lease_of_a_long_key_is_a_leftover_that_cleanup_removes(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    env, cache = member(backend, request, tmp_path, lease_seconds=0.3)
    key = _longest_key(cache)
    log = tmp_path / "computed.log"
    owner = start({**env, "JANGDOK_LEASE_SECONDS": "0.3"}, key, log, 0, "hang")
    wait_for(log)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while (removed := cache.cleanup(older_than=0)) == 0:
        assert time.monotonic() < deadline, "the dead owner's lease was never removed"
        time.sleep(0.5)
    assert removed == 1 and _reserved(cache) == []


@pytest.mark.timeout(60)
def test_a_fifo_planted_at_a_lock_file_never_hangs_a_computation(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who can write the folder can put a FIFO where a lock file goes: the lock cannot
    be taken then, so the value is computed without coordinating, with a WARNING."""
    with Cache.from_settings(Settings(cache_dir=str(tmp_path / "cache"), fallback=False)) as cache:
        locks = tmp_path / "cache" / RESERVED_FOLDER / "locks"
        locks.mkdir(parents=True)
        os.mkfifo(locks / "k.pkl.lock")
        with caplog.at_level("WARNING", logger="jangdok"):
            assert cache.get_or_compute("k.pkl", lambda: "computed") == "computed"
        assert "not a regular file" in caplog.text and "without coordinating" in caplog.text
        assert cache.get("k.pkl") == "computed"


# -- a writer of the folder who plants links where lock files go -----------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


PLANTED_AT_LOCKS = ["a link to a file", "a dangling link", "a hard link to a file", "a link where its folder goes"]


@pytest.mark.parametrize("planted", PLANTED_AT_LOCKS)
def test_a_link_planted_where_a_lock_file_goes_is_never_written_through(planted: str, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Whoever can write the cache folder (but not the reader's home) plants one name where the
    lock of ``report.pkl`` goes. The reader computes without coordinating, and nothing of its
    own changes: not during the computation (when the lock's text is written), not after."""
    home = tmp_path / "victim-home"
    home.mkdir()
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH  # precious\n")
    root = tmp_path / "cache"
    locks = root / RESERVED_FOLDER / "locks"
    locks.parent.mkdir(parents=True)
    if planted == "a link where its folder goes":
        os.symlink(home, locks)
        blocker = locks
    else:
        locks.mkdir()
        blocker = locks / "report.pkl.lock"
        if planted == "a link to a file":
            os.symlink(home / ".bashrc", blocker)
        elif planted == "a dangling link":
            os.symlink(home / "created-by-the-reader", blocker)
        else:
            os.link(home / ".bashrc", blocker)
    before = _files(home)
    during: list[dict[str, bytes]] = []

    def compute() -> int:
        during.append(_files(home))
        return 42

    cache = Cache(str(root), fallback=False)
    with caplog.at_level("WARNING", logger="jangdok"):
        assert cache.get_or_compute("report.pkl", compute) == 42
    assert during == [before] and _files(home) == before
    assert "without coordinating" in caplog.text and str(blocker) in caplog.text
    assert cache.get("report.pkl") == 42


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_a_fifo_renamed_over_a_held_lock_file_never_hangs_its_owner(tmp_path: Path) -> None:
    """A folder at the entry's name makes the save fail, so the owner leaves its lock file
    marked unsaved; meanwhile a FIFO was renamed over the lock file. The mark goes through the
    descriptor the lock was taken on, never by opening the name, which would block for ever."""
    root = tmp_path / "cache"
    (root / "report.pkl").mkdir(parents=True)
    lock = root / RESERVED_FOLDER / "locks" / "report.pkl.lock"

    def compute() -> int:
        assert lock.is_file()  # held, while this computes
        os.mkfifo(tmp_path / "fifo")
        os.rename(tmp_path / "fifo", lock)
        return 42

    cache = Cache(str(root), fallback=False)
    values: list[int] = []
    owner = threading.Thread(target=lambda: values.append(cache.get_or_compute("report.pkl", compute)), daemon=True)
    owner.start()
    owner.join(timeout=60)  # a hang detector: the computation itself takes no time
    if owner.is_alive():
        reader = os.open(lock, os.O_RDONLY | os.O_NONBLOCK)  # lets the blocked open through, so the test ends
        owner.join(timeout=30)
        os.close(reader)
        pytest.fail("the owner blocked opening the FIFO at its lock file's name")
    assert values == [42]
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)  # the planted FIFO is left as it is
