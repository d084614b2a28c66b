"""LocalStore cases the shared conformance suite cannot reach: races injected between the
store's own system calls, processes killed mid-write, durability, and a folder holding things
that are not entries (folders, symlink loops, a failing device)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import jangdok.stores.local as local_module
from jangdok import StoreUnavailable
from jangdok.errors import InvalidRange, JangdokError
from jangdok.location import TEMP_MARKER, parse_location
from jangdok.stores.local import LocalStore

SRC = str(Path(__file__).resolve().parents[1] / "src")


def open_local(root: Path, **options: Any) -> LocalStore:
    return LocalStore(parse_location(str(root)), **options)


def read_all(store: LocalStore, key: str, start: int = 0, stop: int | None = None) -> bytes | None:
    reader = store.read(key, start, stop)
    if reader is None:
        return None
    with reader:
        return reader.read()


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(TEMP_MARKER)]


# --- 1. delete(key, version) removes exactly the version that was read ------------------------


class InterleavingOs:
    """Stands in for the ``os`` module inside ``jangdok.stores.local``: counts the store's file
    system calls and runs ``act`` right before the chosen ones (call ``n`` = right after call
    ``n - 1``). Calls made while ``act`` runs pass straight through, uncounted."""

    WRAPPED = ("stat", "lstat", "rename", "replace", "link", "unlink", "open")

    def __init__(self, act_before: set[int], act: Callable[[int], None]) -> None:
        self._act_before = act_before
        self._act = act
        self._acting = False
        self.calls: list[str] = []
        for name in self.WRAPPED:
            setattr(self, name, self._wrap(name, getattr(os, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._acting:
                number = len(self.calls)
                self.calls.append(name)
                if number in self._act_before:
                    self._acting = True
                    try:
                        self._act(number)
                    finally:
                        self._acting = False
            return real(*args, **kwargs)

        return call


# Single writes before each of the first calls, and pairs (a newer entry, then an even newer one).
SCHEDULES = [(n,) for n in range(4)] + list(itertools.combinations(range(5), 2))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "write-before-call-" + "-and-".join(map(str, s)))
def test_versioned_delete_never_removes_an_entry_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: tuple[int, ...]
) -> None:
    root = tmp_path / "cache"
    store, writer = open_local(root), open_local(root)
    store.write("chapters/label.pkl", b"damaged entry")
    damaged = store.stat("chapters/label.pkl").version
    writes: list[tuple[bytes, bool]] = []  # (value, whether it displaced the damaged version)

    def concurrent_write(call_number: int) -> None:
        current = writer.stat("chapters/label.pkl")
        # Sizes differ from the damaged entry's so a reused inode number cannot fake a version.
        good = b"good entry written before call %d " % call_number * (len(writes) + 2)
        writes.append((good, current is not None and current.version == damaged))
        writer.write("chapters/label.pkl", good)

    interleaving = InterleavingOs(set(schedule), concurrent_write)
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", interleaving)
        deleted = store.delete("chapters/label.pkl", version=damaged)

    assert writes, f"no write was injected; the store made only these calls: {interleaving.calls}"
    assert read_all(store, "chapters/label.pkl") == writes[-1][0], "the newest good entry was lost"
    # Whoever displaced the damaged file removed it; the store may claim it only if nobody did.
    assert deleted is not any(displaced for _, displaced in writes), interleaving.calls
    assert temp_files(root) == []


def test_versioned_delete_without_a_race(tmp_path: Path) -> None:
    store = open_local(tmp_path / "cache")
    store.write("k", b"damaged")
    version = store.stat("k").version
    assert store.delete("k", version="0-0-0") is False
    assert store.delete("k", version=version) is True
    assert store.read("k") is None
    assert store.delete("k", version=version) is False
    assert temp_files(tmp_path / "cache") == []


def test_versioned_delete_of_a_symlinked_entry_removes_the_link_only(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    (tmp_path / "target.bin").write_bytes(b"outside")
    root.mkdir()
    os.symlink(tmp_path / "target.bin", root / "linked")
    version = store.stat("linked").version
    assert store.delete("linked", version=version) is True
    assert not os.path.lexists(root / "linked")
    assert (tmp_path / "target.bin").read_bytes() == b"outside"


# --- 2. a writer killed mid-write leaves nothing visible, and cleanup() removes its file --------

KILLED_WRITER = r"""
import sys, time
from jangdok.location import parse_location
from jangdok.stores.local import LocalStore

root, marker = sys.argv[1], sys.argv[2]

def chunks():
    yield b"x" * (4 << 20)
    open(marker, "w").close()  # the first chunk is in the temporary file now
    time.sleep(600)
    yield b"never written"

LocalStore(parse_location(root)).write("chapters/big.pkl", chunks())
"""


def test_writer_killed_mid_write_leaves_a_temp_file_that_cleanup_removes_when_old(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("chapters/big.pkl", b"old value")
    store.write("other/entry.pkl", b"unrelated")
    marker = tmp_path / "first-chunk-written"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the writer exited before writing its first chunk"
            assert time.monotonic() < deadline, "the writer never wrote its first chunk"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    assert read_all(store, "chapters/big.pkl") == b"old value"
    assert sorted((info.key, info.size) for info in store.list()) == [("chapters/big.pkl", 9), ("other/entry.pkl", 9)]
    [leftover] = temp_files(root)
    assert leftover.parent == root / "chapters" and leftover.stat().st_size == 4 << 20

    assert store.cleanup(older_than=3600) == 0, "a temp file that may belong to a live writer was removed"
    two_hours_ago = time.time() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    assert store.cleanup(3600, prefix="other/") == 0, "cleanup reached outside its prefix"
    assert store.cleanup(3600, prefix="chapters/") == 1
    assert temp_files(root) == []
    assert read_all(store, "chapters/big.pkl") == b"old value"
    assert read_all(store, "other/entry.pkl") == b"unrelated"
    assert store.cleanup(3600) == 0


def test_cleanup_never_touches_entries_or_young_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("a/b/entry.pkl", b"value")
    old = time.time() - 7200
    os.utime(root / "a" / "b" / "entry.pkl", (old, old))
    young = root / "a" / f"{TEMP_MARKER}young"
    young.write_bytes(b"a live writer's partial value")
    aged = [root / "a" / "b" / f"{TEMP_MARKER}aged", root / f"{TEMP_MARKER}aged"]
    for path in aged:
        path.write_bytes(b"left by a killed writer")
        os.utime(path, (old, old))
    assert store.cleanup(3600, prefix="a/b/entry") == 1  # the folder holding that key: a/b/
    assert store.cleanup(3600) == 1
    assert store.cleanup(3600) == 0
    assert young.exists() and read_all(store, "a/b/entry.pkl") == b"value"
    assert store.cleanup(3600, prefix="missing/folder/") == 0
    assert open_local(tmp_path / "never-created").cleanup(0) == 0


def test_concurrent_cleanups_count_each_leftover_once(tmp_path: Path) -> None:
    """Files vanish under a cleanup when another removes them first: no error, no double count."""
    root = tmp_path / "cache" / "chapters"
    root.mkdir(parents=True)
    old = time.time() - 7200
    for number in range(3000):
        path = root / f"{TEMP_MARKER}{number:06d}"
        path.touch()
        os.utime(path, (old, old))
    stores = [open_local(tmp_path / "cache") for _ in range(4)]
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def run(store: LocalStore) -> None:
        start.wait()
        try:
            counts.append(store.cleanup(3600))
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == 3000
    assert temp_files(tmp_path / "cache") == []


def test_prefix_naming_a_folder_reads_only_that_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    for number in range(50):
        store.write(f"unrelated{number:02d}/entry.pkl", b"x")
    store.write("chapters/음식/버거.pkl", b"burger")
    store.write("chapters/label.pkl", b"label")
    scanned: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any = ".") -> Any:
        scanned.append(os.path.relpath(os.fspath(path), root))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)  # what os.walk reads folders with
    assert sorted(info.key for info in store.list("chapters/")) == ["chapters/label.pkl", "chapters/음식/버거.pkl"]
    assert store.cleanup(0, prefix="chapters/") == 0
    assert sorted(info.key for info in store.list("chapters/음")) == ["chapters/음식/버거.pkl"]
    assert set(scanned) == {"chapters", os.path.join("chapters", "음식")}


# --- 3. durable writes --------------------------------------------------------------------------


def test_durable_writes_round_trip_and_leave_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root, durable=True)
    store.write("new/nested/folder/entry.pkl", [b"durable ", b"value"])
    store.write("new/nested/folder/entry.pkl", b"replaced")
    store.write("top.pkl", b"")
    assert read_all(store, "new/nested/folder/entry.pkl") == b"replaced"
    assert read_all(store, "top.pkl") == b""

    def broken() -> Any:
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(StoreUnavailable, match="No space left on device"):
        store.write("top.pkl", broken())
    assert temp_files(root) == []
    assert read_all(store, "top.pkl") == b""


DURABLE_WRITER = r"""
import sys
from jangdok.location import parse_location
from jangdok.stores.local import LocalStore
LocalStore(parse_location(sys.argv[1]), durable=sys.argv[2] == "on").write("sub/entry.pkl", b"value")
"""


@pytest.mark.skipif(shutil.which("strace") is None or not sys.platform.startswith("linux"), reason="needs strace")
@pytest.mark.parametrize("durable", ["on", "off"])
def test_durable_write_syncs_data_before_the_rename_and_the_folder_after(tmp_path: Path, durable: str) -> None:
    root = tmp_path / "cache"
    trace = tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
         sys.executable, "-c", DURABLE_WRITER, str(root), durable],
        env=env, capture_output=True, text=True,
    )
    if completed.returncode != 0 and "ptrace" in completed.stderr:
        pytest.skip(f"strace cannot trace here: {completed.stderr.strip()}")
    assert completed.returncode == 0, completed.stderr
    events = []
    for line in trace.read_text().splitlines():
        match = re.search(r"(fsync|fdatasync|rename\w*)\((.*)\)\s+= 0", line)
        if match and str(root) in match.group(2):
            events.append((match.group(1), match.group(2)))
    calls = [name for name, _ in events]
    assert "renameat2" in calls or "rename" in calls or "renameat" in calls, events
    if durable == "off":
        assert all(not name.startswith(("fsync", "fdatasync")) for name in calls), events
        return
    rename = next(i for i, name in enumerate(calls) if name.startswith("rename"))
    assert any(name == "fsync" and TEMP_MARKER in args for name, args in events[:rename]), events
    synced_after = [args for name, args in events[rename + 1:] if name == "fsync"]
    assert any(args.endswith(f"{root / 'sub'}>") for args in synced_after), events
    assert any(args.endswith(f"{root}>") for args in synced_after), "the new folder's name was not synced"


# --- 4. one error contract: what is not an entry, and failing devices ---------------------------


def test_symlink_loops_are_skipped_by_list_with_a_warning_and_miss_on_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("good.pkl", b"good")
    store.write("sub/inner.pkl", b"inner")
    os.symlink("loop", root / "loop")  # a link to itself
    os.symlink("pong", root / "ping")  # two links to each other
    os.symlink("ping", root / "pong")
    os.symlink("..", root / "sub" / "up")  # a folder link back up: the tree would never end
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        keys = sorted(info.key for info in store.list())
    assert keys == ["good.pkl", "sub/inner.pkl"]
    warned = [record.getMessage() for record in caplog.records if record.name == "jangdok"]
    for name in ("loop", "ping", "pong"):
        assert any(str(root / name) in message for message in warned), warned
    # Read and stat agree with the listing: a link that resolves to no file is no entry.
    for key in ("loop", "ping", "loop/below.pkl"):
        assert store.read(key) is None and store.stat(key) is None and store.exists(key) is False
    assert read_all(store, "sub/up/sub/inner.pkl") == b"inner"  # keys may still go through links
    store.write("loop", b"healed")  # a write replaces the broken link with an entry
    assert read_all(store, "loop") == b"healed"
    assert store.delete("ping") is True and not os.path.lexists(root / "ping")
    with pytest.raises(StoreUnavailable, match=re.escape(str(root / "pong"))):
        store.write("pong/x.pkl", b"x")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux: /proc/self/fd and pty EIO")
def test_io_error_mid_read_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    store = open_local(tmp_path / "cache")
    store.write("big.pkl", b"x" * 1_000_000)
    path = os.path.realpath(store.path("big.pkl"))
    reader = store.read("big.pkl")
    [fd] = [int(fd) for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == path]
    # A real EIO: reading a pty master whose slave side is closed fails with EIO on Linux.
    master, slave = os.openpty()
    os.close(slave)
    try:
        os.dup2(master, fd)
    finally:
        os.close(master)
    with reader, pytest.raises(StoreUnavailable, match=re.escape(store.path("big.pkl"))) as caught:
        reader.read()
    assert "Input/output error" in str(caught.value)


def test_a_folder_where_an_entry_should_be(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    (root / "chapter" / "inside").mkdir(parents=True)
    assert store.read("chapter") is None
    assert store.read("chapter", 0, 0) is None
    assert store.stat("chapter") is None and store.exists("chapter") is False
    assert store.delete("chapter") is False
    assert store.delete("chapter", version="1-2-3") is False
    with pytest.raises(StoreUnavailable, match=f"a folder is in the way at {re.escape(str(root / 'chapter'))}"):
        store.write("chapter", b"value")
    assert (root / "chapter" / "inside").is_dir() and temp_files(root) == []
    assert [info.key for info in store.list()] == []


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("chapter", b"a file")
    for key in ("chapter/label.pkl", "chapter/deeper/label.pkl"):
        with pytest.raises(StoreUnavailable, match=rf"{re.escape(str(root / 'chapter'))} is in the way"):
            store.write(key, b"value")
        assert store.read(key) is None and store.stat(key) is None and store.delete(key) is False
    assert read_all(store, "chapter") == b"a file"


def test_empty_and_invalid_ranges(tmp_path: Path) -> None:
    store = open_local(tmp_path / "cache")
    store.write("k", b"0123456789")
    reader = store.read("k", 0, 0)
    assert reader is not None and reader.size == 0
    with reader:
        assert reader.read() == b""
    assert read_all(store, "k", 4, 4) == b""
    assert store.read("missing", 0, 0) is None
    for start, stop in ((-1, None), (-1, 5), (5, 2), (0, -1)):
        for key in ("k", "missing"):
            with pytest.raises(InvalidRange, match=re.escape(f"[{start}, {stop})")):
                store.read(key, start, stop)


def test_a_file_in_place_of_the_root_folder(tmp_path: Path) -> None:
    """Nothing is stored there: reads miss, listing is empty, a write fails naming the file."""
    root = tmp_path / "cache"
    root.write_bytes(b"not a folder")
    store = open_local(root)
    assert list(store.list()) == []  # nothing is stored there
    assert store.read("k") is None and store.stat("k") is None and store.delete("k") is False
    with pytest.raises(JangdokError, match=re.escape(str(root))):
        store.write("k", b"value")
