"""LocalStore cases the shared conformance suite cannot reach: races injected between the
store's own system calls, processes killed mid-write, durability, and a folder holding things
that are not entries (folders, symlink loops, a failing device)."""

from __future__ import annotations

import errno
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

import jangdok.folders as folders_module
import jangdok.stores.filewrite as filewrite
import jangdok.stores.local as local_module
from jangdok import StoreUnavailable
from jangdok.errors import InvalidRange, JangdokError
from jangdok.folders import Folder
from jangdok.location import TEMP_MARKER, is_reserved, parse_location
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


def test_a_root_removed_between_writes_is_made_again(tmp_path: Path) -> None:
    """A write in the root tries the file first and makes the root only if that fails: a root
    never made, or removed (``rm -rf cache``) while the store is open, is made by the next write."""
    root = tmp_path / "deep" / "cache"
    store = open_local(root)
    store.write("a.pkl", [b"one"])
    shutil.rmtree(tmp_path / "deep")
    store.write("a.pkl", [b"two"])
    store.write("x/b.pkl", [b"three"])
    assert read_all(store, "a.pkl") == b"two" and read_all(store, "x/b.pkl") == b"three"
    assert temp_files(root) == []


def test_a_file_where_the_root_goes_fails_a_write_naming_the_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.write_text("not a folder")
    with pytest.raises(StoreUnavailable, match=re.escape(f"{root / 'a.pkl'}: {root} is in the way")):
        open_local(root).write("a.pkl", [b"one"])
    assert root.read_text() == "not a folder"


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


class NoHardLinksOs(InterleavingOs):
    """A file system without hard links (FAT, some network mounts): link() fails, as there."""

    def __init__(self, act_before: set[int], act: Callable[[int], None]) -> None:
        super().__init__(act_before, act)
        self.link = self._wrap("link", _failing(errno.EPERM))


def _failing(number: int) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise OSError(number, os.strerror(number))

    return call


@pytest.mark.parametrize("links", ["hard-links", "no-hard-links"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "write-before-call-" + "-and-".join(map(str, s)))
def test_versioned_delete_never_removes_an_entry_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: tuple[int, ...], links: str
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

    interleaving = (InterleavingOs if links == "hard-links" else NoHardLinksOs)(set(schedule), concurrent_write)
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


def test_a_versioned_delete_of_another_version_never_hides_the_entry_from_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual case of a stale version (another writer replaced the entry since it was read)
    is answered without moving the entry: a reader at any moment of it finds the entry."""
    root = tmp_path / "cache"
    store, reader = open_local(root), open_local(root)
    store.write("chapters/label.pkl", b"old entry")
    stale = store.stat("chapters/label.pkl").version
    store.write("chapters/label.pkl", b"the newer entry, of another size")
    seen: list[bytes | None] = []
    interleaving = InterleavingOs(set(range(10)), lambda _: seen.append(read_all(reader, "chapters/label.pkl")))
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", interleaving)
        assert store.delete("chapters/label.pkl", version=stale) is False
        seen.append(read_all(reader, "chapters/label.pkl"))
    assert seen and set(seen) == {b"the newer entry, of another size"}, interleaving.calls


@pytest.mark.parametrize(("versioned", "failing"), [(True, "stat"), (True, "rename"), (True, "unlink"),
                                                 (False, "unlink")])
def test_a_failing_disk_during_a_delete_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, versioned: bool, failing: str
) -> None:
    """Never "nothing deleted", nor "deleted" when the entry is still there (moved aside for a
    versioned delete: the message says where)."""
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("chapters/label.pkl", b"damaged entry")
    version = store.stat("chapters/label.pkl").version if versioned else None
    failing_os = InterleavingOs(set(), lambda _: None)
    setattr(failing_os, failing, _failing(errno.EIO))
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", failing_os)
        with pytest.raises(StoreUnavailable, match=re.escape(store.path("chapters/label.pkl"))) as caught:
            store.delete("chapters/label.pkl", version=version)
    assert "Input/output error" in str(caught.value)
    [left] = [*temp_files(root), *(root / "chapters").glob("label.pkl")]
    assert left.read_bytes() == b"damaged entry"
    if left.name != "label.pkl":
        assert str(left) in str(caught.value)


def test_a_link_failing_while_a_newer_entry_is_put_back_says_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A versioned delete that took a newer entry by mistake and cannot return it (a failing
    disk, not a file system without links) says where the entry is, rather than losing it."""
    root = tmp_path / "cache"
    store, writer = open_local(root), open_local(root)
    store.write("chapters/label.pkl", b"damaged entry")
    damaged = store.stat("chapters/label.pkl").version
    failing_os = InterleavingOs({1}, lambda _: writer.write("chapters/label.pkl", b"a newer, good entry"))
    failing_os.link = _failing(errno.EIO)
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", failing_os)
        with pytest.raises(StoreUnavailable, match="could not be put back") as caught:
            store.delete("chapters/label.pkl", version=damaged)
    [aside] = temp_files(root)
    assert aside.read_bytes() == b"a newer, good entry" and str(aside) in str(caught.value)


def test_a_folder_raced_into_a_versioned_deletes_name_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the check and the move aside, the entry gives way to a folder: the delete moves
    the folder aside, finds no entry, and returns it whole (link() cannot take folders)."""
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("chapters/label.pkl", b"damaged entry")
    damaged = store.stat("chapters/label.pkl").version

    def folder_instead(_: int) -> None:
        os.unlink(root / "chapters" / "label.pkl")
        (root / "chapters" / "label.pkl").mkdir()
        (root / "chapters" / "label.pkl" / "inside").write_bytes(b"someone's file")

    interleaving = InterleavingOs({1}, folder_instead)
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", interleaving)
        assert store.delete("chapters/label.pkl", version=damaged) is False
    assert interleaving.calls[:2] == ["stat", "rename"]
    assert (root / "chapters" / "label.pkl" / "inside").read_bytes() == b"someone's file"
    assert temp_files(root) == []


def test_a_versioned_delete_racing_another_delete_of_the_same_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cleaners remove the same damaged version: exactly one says it deleted it."""
    root = tmp_path / "cache"
    store, other = open_local(root), open_local(root)
    store.write("chapters/label.pkl", b"damaged entry")
    damaged = store.stat("chapters/label.pkl").version
    outcome: list[bool] = []
    interleaving = InterleavingOs({1}, lambda _: outcome.append(other.delete("chapters/label.pkl", version=damaged)))
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", interleaving)
        outcome.append(store.delete("chapters/label.pkl", version=damaged))
    assert outcome == [True, False]
    assert read_all(store, "chapters/label.pkl") is None and temp_files(root) == []


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
    real_entries = Folder.entries

    def counting_entries(folder: Folder) -> Any:
        scanned.append(os.path.relpath(folder.path, root))
        return real_entries(folder)

    monkeypatch.setattr(Folder, "entries", counting_entries)  # what the walk reads folders with
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
    assert store.read("sub/up/sub/inner.pkl") is None  # never through a link to a folder, even one inside
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


# --- 5. large values: exchange renames, vectored writes, memory maps ----------------------------


class HookedOs:
    """Stands in for ``os`` inside ``jangdok.stores.local``: runs ``act`` once, right before or
    right after the store's first call of ``name``. Calls made while ``act`` runs pass through."""

    def __init__(self, name: str, when: str, act: Callable[[], None]) -> None:
        self._name, self._when, self._act = name, when, act
        self.fired = False
        setattr(self, name, self._wrap(getattr(os, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.fired:
                return real(*args, **kwargs)
            if self._when == "before":
                self.fired = True
                self._act()
                return real(*args, **kwargs)
            result = real(*args, **kwargs)
            self.fired = True
            self._act()
            return result

        return call


EXCHANGE_WRITER = r"""
import sys
from jangdok.location import parse_location
from jangdok.stores.local import LocalStore
store = LocalStore(parse_location(sys.argv[1]), durable=sys.argv[2] == "on")
store.write("sub/entry.pkl", b"old value")
store.write("sub/entry.pkl", b"new value")
"""


@pytest.mark.skipif(shutil.which("strace") is None or not sys.platform.startswith("linux"), reason="needs strace")
@pytest.mark.parametrize("durable", ["on", "off"])
def test_writing_over_an_entry_exchanges_the_names_then_unlinks_the_old_file(tmp_path: Path, durable: str) -> None:
    root = tmp_path / "cache"
    trace = tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
         "trace=fsync,rename,renameat,renameat2,unlink,unlinkat", sys.executable, "-c", EXCHANGE_WRITER, str(root),
         durable],
        env=env, capture_output=True, text=True,
    )
    if completed.returncode != 0 and "ptrace" in completed.stderr:
        pytest.skip(f"strace cannot trace here: {completed.stderr.strip()}")
    assert completed.returncode == 0, completed.stderr
    lines = [line for line in trace.read_text().splitlines() if str(root) in line or "fsync(" in line]
    exchanges = [i for i, line in enumerate(lines) if "RENAME_EXCHANGE" in line]
    if not exchanges and any("RENAME_EXCHANGE" in line and "= -1" in line for line in trace.read_text().splitlines()):
        pytest.skip("this kernel or file system cannot exchange names")
    [exchange] = exchanges  # only the second write replaces an entry; the first makes a new one
    # Both names relative to the descriptor of the entry's folder (strace -y shows its path).
    folder = re.escape(f"<{root / 'sub'}>")
    swapped = re.search(rf'renameat2\(\d+{folder}, "([^"]+)", \d+{folder}, "entry.pkl", RENAME_EXCHANGE\) = 0',
                        lines[exchange])
    assert swapped, lines
    temp = swapped.group(1)
    assert temp.startswith(TEMP_MARKER)
    unlinks = [i for i, line in enumerate(lines) if re.search(rf'unlinkat\(\d+{folder}, "{re.escape(temp)}"', line)]
    assert unlinks and unlinks[0] > exchange and " = 0" in lines[unlinks[0]], lines
    if durable == "on":  # data synced before the exchange, the folder after the unlink
        assert "fsync(" in lines[exchange - 1], lines
        assert any("fsync(" in line for line in lines[unlinks[0] + 1:]), lines
    assert read_all(open_local(root), "sub/entry.pkl") == b"new value"
    assert temp_files(root) == []


def test_replaced_entry_is_unlinked_and_readers_never_miss_the_name(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    values = [bytes([65 + n]) * (3 << 20) + b"value %d" % n for n in range(2)]
    store.write("label.pkl", values[0])
    with open(store.path("label.pkl"), "rb") as old:
        store.write("label.pkl", values[1])
        assert os.fstat(old.fileno()).st_nlink == 0, "the replaced file is still linked somewhere"
        assert old.read() == values[0], "an open reader keeps the old value"
    assert temp_files(root) == []

    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(store.path("label.pkl"), "rb") as file:
                    data = file.read()
            except FileNotFoundError:
                seen.append("missing")
                continue
            seen.append("ok" if data in values else "torn")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for number in range(60):
            store.write("label.pkl", values[number % 2])
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) == {"ok"}, {outcome: seen.count(outcome) for outcome in set(seen)}
    assert temp_files(root) == []


def _versioned_delete_of_current(store: LocalStore, outcome: dict[str, Any]) -> Callable[[], None]:
    def act() -> None:
        current = store.stat("label.pkl")
        outcome["deleted_value"] = read_all(store, "label.pkl")
        outcome["deleted"] = store.delete("label.pkl", version=current.version)

    return act


@pytest.mark.parametrize("race", ["delete-after-check", "delete-after-exchange", "write-after-check",
                                  "write-after-exchange"])
def test_exchange_races_with_a_versioned_delete_or_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    """"check" is the writer's lstat of the key, "exchange" the swap (the next call unlinks the
    old file): a versioned delete or a second writer runs exactly there."""
    root = tmp_path / "cache"
    store, other = open_local(root), open_local(root)
    store.write("label.pkl", b"old value")
    outcome: dict[str, Any] = {}
    if race.startswith("delete"):
        act = _versioned_delete_of_current(other, outcome)
    else:
        def act() -> None:
            other.write("label.pkl", b"the other writer's value")
    hooked = HookedOs("lstat", "after", act) if race.endswith("check") else HookedOs("unlink", "before", act)
    with open(store.path("label.pkl"), "rb") as old:
        with monkeypatch.context() as patch:
            patch.setattr(local_module, "os", hooked)
            store.write("label.pkl", b"new value")
        assert hooked.fired
        assert os.fstat(old.fileno()).st_nlink == 0, "the old entry was left behind"
    expected = {
        "delete-after-check": b"new value",  # the delete took the old entry; the write lands after
        "delete-after-exchange": None,  # the delete read the new entry and removed exactly it
        "write-after-check": b"new value",  # the last exchange wins
        "write-after-exchange": b"the other writer's value",
    }[race]
    assert read_all(store, "label.pkl") == expected
    if race.startswith("delete"):
        assert outcome["deleted"] is True
        assert outcome["deleted_value"] == (b"old value" if race.endswith("check") else b"new value")
    assert temp_files(root) == []


def test_a_folder_taking_the_name_before_the_exchange_stays_and_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    store, other = open_local(root), open_local(root)
    store.write("chapter", b"an entry")

    def folder_replaces_entry() -> None:  # deleted, then a key below it written
        other.delete("chapter")
        other.write("chapter/label.pkl", b"below")

    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", HookedOs("lstat", "after", folder_replaces_entry))
        with pytest.raises(StoreUnavailable, match=f"a folder is in the way at {re.escape(str(root / 'chapter'))}"):
            store.write("chapter", b"new value")
    assert read_all(store, "chapter/label.pkl") == b"below"
    assert temp_files(root) == [] and sorted(os.listdir(root)) == ["chapter"]


@pytest.fixture
def fake_renameat2(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[bytes]]:
    """Makes the kernel answer renameat2 with an error: the C function is replaced, and the store's
    process-wide memory of what is unsupported starts empty and is thrown away afterwards."""
    import ctypes

    def install(code: int) -> list[bytes]:
        calls: list[bytes] = []

        def renameat2(_old_dir: int, old: bytes, _new_dir: int, new: bytes, flags: int) -> int:
            calls.append(new)
            ctypes.set_errno(code)
            return -1

        exchange = filewrite.Exchange()
        monkeypatch.setattr(exchange, "_resolved", True)
        monkeypatch.setattr(exchange, "_function", renameat2)
        monkeypatch.setattr(exchange, "_get_errno", ctypes.get_errno)
        monkeypatch.setattr(filewrite, "exchange", exchange)
        return calls

    return install


def test_no_exchange_in_the_kernel_falls_back_to_replace_and_is_asked_once(
    tmp_path: Path, fake_renameat2: Callable[[int], list[bytes]]
) -> None:
    import errno

    calls = fake_renameat2(errno.ENOSYS)
    store = open_local(tmp_path / "cache")
    for number in range(3):
        store.write("a.pkl", b"value %d" % number)
        store.write("b.pkl", b"value %d" % number)
    assert read_all(store, "a.pkl") == b"value 2" and read_all(store, "b.pkl") == b"value 2"
    assert len(calls) == 1, "the process should remember that the kernel cannot exchange"
    assert temp_files(tmp_path / "cache") == []


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK), reason="needs /dev/shm")
def test_a_file_system_that_cannot_exchange_is_remembered_for_its_device_only(
    tmp_path: Path, fake_renameat2: Callable[[int], list[bytes]]
) -> None:
    import errno
    import tempfile

    calls = fake_renameat2(errno.EINVAL)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        if os.stat(elsewhere).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same device as the test folder")
        here, there = open_local(tmp_path / "cache"), open_local(Path(elsewhere) / "cache")
        for store in (here, there):
            for number in range(3):
                store.write("k.pkl", b"value %d" % number)
            assert read_all(store, "k.pkl") == b"value 2"
        assert len(calls) == 2, "each device is asked once"
        assert temp_files(tmp_path / "cache") == [] and temp_files(Path(elsewhere)) == []


def test_many_chunks_of_every_size_are_written_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import array

    iov_max = filewrite.IOV_MAX
    chunks: list[Any] = []
    for number in range(3 * iov_max + 17):  # several full writev batches and a partial one
        chunks.append(bytes([number % 251]) * (number % 5))  # includes empty chunks
        if number % 400 == 0:
            chunks.append(bytearray(os.urandom(3 << 20)))
        if number % 700 == 0:
            chunks.append(memoryview(array.array("d", range(1000)))[3:900])  # a float array, sliced
    expected = b"".join(bytes(memoryview(chunk).cast("B")) for chunk in chunks)
    batches: list[int] = []
    real_writev = os.writev

    def counting_writev(fd: int, buffers: list[Any]) -> int:
        batches.append(len(buffers))
        return real_writev(fd, buffers)

    store = open_local(tmp_path / "cache")
    monkeypatch.setattr(os, "writev", counting_writev)
    store.write("many.pkl", chunks)
    store.write("one.pkl", expected)
    monkeypatch.undo()
    assert read_all(store, "many.pkl") == expected
    assert read_all(store, "one.pkl") == expected
    assert max(batches) <= iov_max
    non_empty = sum(1 for chunk in chunks if memoryview(chunk).nbytes)
    assert len(batches) - 1 == -(-non_empty // iov_max), "one writev per batch when nothing is written short"


@pytest.mark.parametrize("limits", [(1,), (7, 4096 + 3, 1), ((1 << 20) + 5, 2, 999)], ids=str)
def test_short_writes_resume_exactly_where_the_kernel_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: tuple[int, ...]
) -> None:
    """A kernel may accept fewer bytes than asked (a signal, a 2 GiB cap, a pipe-like device):
    the stand-in writev writes at most the next limit's bytes, for real, and says how many."""
    chunks = [os.urandom(n) for n in (1, 0, 2, 5000, 1, 3 << 20, 3, 0, 64 << 10)] * 40
    expected = b"".join(chunks)
    sizes = itertools.cycle(limits)
    real_writev = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[Any]) -> int:
        budget, taken = next(sizes), []
        for buffer in buffers:
            view = memoryview(buffer)[:budget]
            taken.append(view)
            budget -= view.nbytes
            if budget == 0:
                break
        calls.append(len(taken))
        return real_writev(fd, taken)

    store = open_local(tmp_path / "cache")
    monkeypatch.setattr(os, "writev", short_writev)
    if limits == (1,):  # a byte at a time is slow: fewer, still tricky, chunks
        chunks = [b"ab", b"", b"c", b"defgh", os.urandom(3000)] * 3
        expected = b"".join(chunks)
    store.write("k.pkl", chunks)
    monkeypatch.undo()
    assert read_all(store, "k.pkl") == expected
    assert len(calls) > len([c for c in chunks if c]) // filewrite.IOV_MAX + 1, "no short write happened"


RLIMITED_WRITER = r"""
import resource, signal, sys
from jangdok import StoreUnavailable
from jangdok.location import parse_location
from jangdok.stores.local import LocalStore
store = LocalStore(parse_location(sys.argv[1]))
store.write("k.pkl", b"old value")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_003, resource.RLIM_INFINITY))
try:
    store.write("k.pkl", [b"x" * 999_999, b"y" * 3, b"z" * 500_000, b"w" * 10])
except StoreUnavailable as exc:
    print(exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE short writes are Linux behaviour")
def test_a_real_short_write_then_a_failure_keeps_the_old_entry(tmp_path: Path) -> None:
    """The kernel writes up to the file size limit (a short writev), then refuses: the store
    resumes after the short write, reports the refusal and removes its temporary file."""
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run([sys.executable, "-c", RLIMITED_WRITER, str(root)], env=env,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "File too large" in completed.stdout and str(root / "k.pkl") in completed.stdout, completed.stdout
    assert read_all(open_local(root), "k.pkl") == b"old value"
    assert temp_files(root) == []


def test_a_generator_chunk_reaches_the_file_before_the_next_is_asked_for(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    sizes_seen: list[int] = []
    buffer = bytearray(100_000)

    def produce() -> Any:  # reuses one buffer, as a streaming producer may
        for number in range(5):
            buffer[:] = bytes([48 + number]) * len(buffer)
            yield buffer
            [temp] = temp_files(root)
            sizes_seen.append(temp.stat().st_size)

    store.write("streamed.pkl", produce())
    assert sizes_seen == [100_000 * n for n in range(1, 6)]
    assert read_all(store, "streamed.pkl") == b"".join(bytes([48 + n]) * 100_000 for n in range(5))


def test_map_gives_the_file_privately_and_outlives_replacement_and_delete(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    root = tmp_path / "cache"
    store = open_local(root)
    assert store.capabilities.mapping is True
    arrays = np.arange(1_000_000, dtype=np.float64)
    store.write("labels.pkl", [b"header--", arrays.data])
    on_disk = (root / "labels.pkl").read_bytes()
    mapped = store.map("labels.pkl")
    assert mapped is not None
    view, info = mapped
    assert info == store.stat("labels.pkl")
    assert view.nbytes == info.size == len(on_disk) and view.tobytes() == on_disk

    values = np.frombuffer(view, dtype=np.float64, offset=8)  # arrays built on the map are writable
    assert values.flags.writeable and values[123] == 123.0
    values[:10] = -1.0
    view[0:8] = b"CHANGED!"
    assert (root / "labels.pkl").read_bytes() == on_disk, "writing to the map reached the file"
    other_view, _ = store.map("labels.pkl")
    assert other_view.tobytes() == on_disk, "one map's private changes leaked into another"

    store.write("labels.pkl", b"a new, short value")  # the old file lives on while mapped
    assert values[123] == 123.0 and values[5] == -1.0 and bytes(view[:8]) == b"CHANGED!"
    assert bytes(other_view[8:16]) == on_disk[8:16] and other_view[-8:].tobytes() == on_disk[-8:]
    assert store.delete("labels.pkl") is True
    assert other_view.tobytes() == on_disk
    assert store.map("labels.pkl") is None
    del values, view, other_view
    assert temp_files(root) == []


def test_map_of_empty_missing_and_non_entries(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("empty.pkl", b"")
    view, info = store.map("empty.pkl")
    assert view.nbytes == 0 and info.size == 0 and info == store.stat("empty.pkl")
    assert store.map("missing.pkl") is None and store.map("no/such/folder.pkl") is None
    (root / "folder").mkdir()
    os.symlink("loop", root / "loop")
    os.symlink(tmp_path / "nowhere", root / "dangling")
    assert store.map("folder") is None and store.map("loop") is None and store.map("dangling") is None
    assert store.map("empty.pkl/below") is None  # a file where a folder would be
    (tmp_path / "target.bin").write_bytes(b"through a link")
    os.symlink(tmp_path / "target.bin", root / "linked")
    view, info = store.map("linked")
    assert view.tobytes() == b"through a link" and info == store.stat("linked")


SYSFS_FILES = ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/power/state", "/sys/kernel/profiling"]


@pytest.mark.skipif(not any(os.path.isfile(path) for path in SYSFS_FILES), reason="needs Linux sysfs")
def test_map_failure_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    """sysfs files are regular files that cannot be mapped: mmap fails for real (ENODEV)."""
    root = tmp_path / "cache"
    root.mkdir()
    os.symlink(next(path for path in SYSFS_FILES if os.path.isfile(path)), root / "unmappable")
    store = open_local(root)
    with pytest.raises(StoreUnavailable, match=re.escape(str(root / "unmappable"))):
        store.map("unmappable")


def test_progress_counts_bytes_as_they_reach_the_file(tmp_path: Path) -> None:
    store = open_local(tmp_path / "cache")
    big = os.urandom(1 << 20) * 20  # one 20 MiB chunk still reports more than once
    for data in ([b"header", big, b"", b"tail"], (chunk for chunk in [b"header", big, b"tail"])):
        calls: list[int] = []
        store.write("k.pkl", data, calls.append)
        assert len(calls) >= 3 and calls == sorted(calls) and calls[-1] == len(big) + 10, calls
        assert read_all(store, "k.pkl") == b"header" + big + b"tail"
    calls = []
    store.write("empty.pkl", b"", calls.append)
    assert calls == [] and read_all(store, "empty.pkl") == b""


# --- things that are not regular files, planted where an entry should be ------------------------


def _plant(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        os.symlink("/dev/zero", path)
    else:  # a unix socket, bound and left there
        import socket

        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))


NOT_FILES = [pytest.param(kind, marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only"))
             for kind in ("fifo", "link to /dev/zero", "socket")]


@pytest.mark.timeout(30)  # before the fix, opening a FIFO with no writer blocked forever
@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_fifo_device_or_socket_at_an_entry_is_a_miss_at_once(kind: str, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    _plant(kind, root / "planted.pkl")
    store = open_local(root)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert store.read("planted.pkl") is None
        assert store.read("planted.pkl", 0, 100) is None
        assert store.map("planted.pkl") is None
    assert "is not a regular file" in caplog.text and str(root / "planted.pkl") in caplog.text
    assert store.stat("planted.pkl") is None and store.exists("planted.pkl") is False
    assert [info.key for info in store.list()] == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signing", [False, True])
@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_a_fifo_at_an_entry_never_hangs_a_cache(signing: bool, mmap: bool, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from jangdok import Cache

    root = tmp_path / "cache"
    (root / "chapter").mkdir(parents=True)
    os.mkfifo(root / "chapter" / "x.pkl")
    cache = Cache(str(root), fallback=False, mmap=mmap, signing_keys="team-key-0123456789abcdef" if signing else None)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("chapter/x.pkl", "miss") == "miss"
        assert cache.stat("chapter/x.pkl") is None
        assert cache.verify("chapter/x.pkl").status == "missing"
        assert cache.get_or_compute("chapter/x.pkl", lambda: [1, 2]) == [1, 2]  # computed, saved over it
    assert str(root / "chapter" / "x.pkl") in caplog.text
    assert cache.get("chapter/x.pkl") == [1, 2] and (root / "chapter" / "x.pkl").is_file()


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "by-name"])
def test_looking_for_a_key_in_missing_folders_makes_none(descriptors: bool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads, stats, existence checks, deletes and listings of keys below folders that do not
    exist are misses: none of them leaves a folder behind (only a write makes its folders)."""
    monkeypatch.setattr(folders_module, "DESCRIPTORS", descriptors)
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("kept.pkl", b"value")
    assert store.read("a/b/c.pkl") is None and store.stat("a/b/c.pkl") is None
    assert not store.exists("a/b/c.pkl") and store.delete("a/b/c.pkl") is False
    assert store.delete("a/b/c.pkl", version="1") is False and list(store.list("a/")) == []
    assert sorted(path.name for path in root.iterdir()) == ["kept.pkl"]
    store.write("a/b/c.pkl", b"made")
    assert read_all(store, "a/b/c.pkl") == b"made"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_walking_folders_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Each folder of a key's path is held open while the next is reached, then closed: a
    thousand lookups, hits and misses, leave no more descriptors open than they found."""
    store = open_local(tmp_path / "cache")
    store.write("a/b/c.pkl", b"value")
    read_all(store, "a/b/c.pkl")
    before = _open_descriptors()
    for _ in range(500):
        assert store.stat("a/b/c.pkl") is not None and store.stat("a/missing/c.pkl") is None
        assert store.stat("a/b/c.pkl/d.pkl") is None  # a file where a folder goes
    assert _open_descriptors() <= before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_reads_and_maps_leave_no_descriptor_open(tmp_path: Path) -> None:
    """A reader holds its file's descriptor until it is closed (or collected); map() closes its
    own once mapped (what the map keeps, before Python 3.13, goes with it). Entries in the root
    and in folders, whole and in ranges, read or not, and misses."""
    store = open_local(tmp_path / "cache")
    for key in ("top.pkl", "a/b/deep.pkl"):
        store.write(key, bytes(range(256)) * 40)
    (tmp_path / "cache" / "a" / "folder.pkl").mkdir()
    read_all(store, "top.pkl")
    before = _open_descriptors()
    for _ in range(50):
        for key in ("top.pkl", "a/b/deep.pkl"):
            assert read_all(store, key) == bytes(range(256)) * 40
            assert read_all(store, key, 300, 310) == bytes(range(44, 54))
            mapped = store.map(key)
            assert mapped is not None and mapped[0][:3].tobytes() == b"\0\1\2"
            del mapped
            unread = store.read(key, 5)
            assert unread is not None and unread.size == 10235
            del unread  # never read nor closed: collected, it closes its descriptor
        assert store.read("missing.pkl") is None and store.map("a/folder.pkl") is None
    assert _open_descriptors() <= before


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "by-name"])
def test_a_file_where_a_folder_goes_is_named_as_such(descriptors: bool, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at ``a/b`` where ``a/b/c.pkl`` needs a folder: reads miss, and a write fails saying
    a file is in the way there (not a link, which would send the reader looking elsewhere)."""
    monkeypatch.setattr(folders_module, "DESCRIPTORS", descriptors)
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("a/b", b"a file")
    assert store.read("a/b/c.pkl") is None and store.stat("a/b/c.pkl") is None
    with pytest.raises(StoreUnavailable) as raised:
        store.write("a/b/c.pkl", b"value")
    assert f"{root / 'a' / 'b'} is in the way (it is not a folder)" in str(raised.value)
    assert "link" not in str(raised.value)
    assert read_all(store, "a/b") == b"a file"


def test_a_folder_that_cannot_be_opened_is_an_error_naming_why(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of the key's path that cannot be opened for another reason (permissions, here
    given by hand: the tests may run as root) is the store's error, saying why, at once: not
    a miss, not a link, not a folder made again and again."""
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("locked/c.pkl", b"value")
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(str(path)) == "locked" and flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(folders_module.os, "open", refusing)
    for attempt in (lambda: store.read("locked/c.pkl"), lambda: store.write("locked/c.pkl", b"new")):
        with pytest.raises(JangdokError) as raised:
            attempt()
        assert "permission denied" in str(raised.value).lower() and "link" not in str(raised.value)
    monkeypatch.undo()
    assert read_all(store, "locked/c.pkl") == b"value"


# --- links planted below the root: never followed where a folder goes ----------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _victim_folder(tmp_path: Path) -> Path:
    """A folder of the reader's own, outside the cache, holding files named like entries and
    like a killed writer's leftovers."""
    private = tmp_path / "victim-project" / "chapters"
    private.mkdir(parents=True)
    (private / "chapter_1.pkl").write_text("not a pickle: the victim's own notes\n")
    (private / "chapter_2.pkl").write_text("victim data 2\n")
    (private / f"{TEMP_MARKER}0123456789abcdef").write_text("the victim's, named like a leftover\n")
    old = time.time() - 7200
    os.utime(private / f"{TEMP_MARKER}0123456789abcdef", (old, old))
    return private


@pytest.mark.parametrize("folder", ["chapters", "deep/chapters"])
def test_a_link_planted_where_a_folder_goes_never_leads_outside_the_cache(folder: str, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The review's case: whoever can write the cache folder makes ``chapters`` a link to the
    reader's own project. Nothing outside the cache is read as an entry, deleted as damage,
    overwritten, listed or cleaned up; the keys below the link are misses, saves fail naming
    the link, and a computation still gives its value."""
    from jangdok import Cache

    private = _victim_folder(tmp_path)
    root = tmp_path / "cache"
    (root / folder).parent.mkdir(parents=True)
    os.symlink(private, root / folder)
    before = _files(private)
    cache = Cache(str(root), fallback=False)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get(f"{folder}/chapter_1.pkl", "miss") == "miss"
        assert cache.stat(f"{folder}/chapter_1.pkl") is None and not cache.exists(f"{folder}/chapter_1.pkl")
        with pytest.raises(StoreUnavailable, match=re.escape(f"{root / folder} is in the way (a symbolic link")):
            cache.put(f"{folder}/chapter_2.pkl", [1, 2, 3])
        assert cache.get_or_compute(f"{folder}/chapter_2.pkl", lambda: [1, 2, 3]) == [1, 2, 3]
        assert cache.delete(f"{folder}/chapter_2.pkl") is False
        assert cache.store.delete(f"{folder}/chapter_2.pkl", version="1-2-3") is False
        assert [info.key for info in cache.store.list() if not is_reserved(info.key)] == []
        assert list(cache.store.list(f"{folder}/")) == []
        assert cache.store.cleanup(0) == 0 and cache.store.cleanup(0, prefix=f"{folder}/") == 0
        assert cache.store.map(f"{folder}/chapter_1.pkl") is None
    assert _files(private) == before
    assert f"Cache folder {root / folder} is a symbolic link" in caplog.text


def _swap_for_link(root: Path, private: Path) -> Callable[[], None]:
    def swap() -> None:  # the folder, already reached, is moved away and a link takes its name
        os.rename(root / "chapters", root / "moved")
        os.symlink(private, root / "chapters")

    return swap


SWAPS = [("read", "open"), ("stat", "stat"), ("write", "open"), ("write", "lstat"), ("delete", "unlink"),
         ("versioned delete", "rename"), ("cleanup", "lstat")]


@pytest.mark.parametrize(("operation", "call"), SWAPS, ids=[f"{op}-before-{call}" for op, call in SWAPS])
def test_a_folder_swapped_for_a_link_after_it_was_reached_redirects_nothing(
        operation: str, call: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap happens right before the store's first use of a name in the folder: every
    operation still acts on the folder it reached (now at ``moved``), never through the link."""
    private = _victim_folder(tmp_path)
    (private / "chapter_1.pkl").rename(private / "x.pkl")
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("chapters/x.pkl", b"the cache's entry")
    version = store.stat("chapters/x.pkl").version
    leftover = root / "chapters" / f"{TEMP_MARKER}0123456789abcdef"
    leftover.write_text("a killed writer's\n")
    os.utime(leftover, (time.time() - 7200,) * 2)
    before = _files(private)
    hooked = HookedOs(call, "before", _swap_for_link(root, private))
    with monkeypatch.context() as patch:
        patch.setattr(local_module, "os", hooked)
        if operation == "read":
            outcome: Any = read_all(store, "chapters/x.pkl")
        elif operation == "stat":
            outcome = store.stat("chapters/x.pkl").size
        elif operation == "write":
            store.write("chapters/x.pkl", b"a new value")
            outcome = (root / "moved" / "x.pkl").read_bytes()
        elif operation == "delete":
            outcome = store.delete("chapters/x.pkl"), (root / "moved" / "x.pkl").exists()
        elif operation == "versioned delete":
            outcome = store.delete("chapters/x.pkl", version=version), (root / "moved" / "x.pkl").exists()
        else:
            outcome = store.cleanup(3600, prefix="chapters/"), (root / "moved" / leftover.name).exists()
    assert hooked.fired
    assert _files(private) == before
    assert outcome == {"read": b"the cache's entry", "stat": len(b"the cache's entry"), "write": b"a new value",
                       "delete": (True, False), "versioned delete": (True, False), "cleanup": (1, False)}[operation]


def test_a_root_that_is_a_link_is_the_users_choice_and_followed(tmp_path: Path) -> None:
    """CACHE_DIR may point at a folder on another disk through a link: only what lies below
    the root is judged."""
    (tmp_path / "other-disk").mkdir()
    os.symlink(tmp_path / "other-disk", tmp_path / "cache")
    store = open_local(tmp_path / "cache")
    store.write("top.pkl", b"top")
    store.write("chapters/deep/x.pkl", b"deep")
    assert read_all(store, "top.pkl") == b"top" and read_all(store, "chapters/deep/x.pkl") == b"deep"
    assert sorted(info.key for info in store.list()) == ["chapters/deep/x.pkl", "top.pkl"]
    assert (tmp_path / "other-disk" / "chapters" / "deep" / "x.pkl").read_bytes() == b"deep"
    assert store.delete("chapters/deep/x.pkl") is True and store.stat("chapters/deep/x.pkl") is None


def test_damage_found_through_a_linked_entry_removes_the_link_never_what_it_points_to(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A link at an entry's own name is read as the file it points to (reading writes nothing);
    judged damaged, the link is removed, and the file it points to stays."""
    from jangdok import Cache

    notes = tmp_path / "victim-notes.pkl"
    notes.write_text("not a pickle: the victim's own notes\n")
    root = tmp_path / "cache"
    root.mkdir()
    os.symlink(notes, root / "notes.pkl")
    cache = Cache(str(root), fallback=False)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("notes.pkl", "miss") == "miss"
    assert not os.path.lexists(root / "notes.pkl")
    assert notes.read_text() == "not a pickle: the victim's own notes\n"


def test_a_linked_entry_is_read_as_its_file_and_a_write_replaces_the_link(tmp_path: Path) -> None:
    from jangdok import Cache

    elsewhere = Cache(str(tmp_path / "elsewhere"), fallback=False)
    elsewhere.put("chapters/labels.pkl", "computed elsewhere")
    root = tmp_path / "cache"
    (root / "chapters").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "chapters" / "labels.pkl", root / "chapters" / "labels.pkl")
    cache = Cache(str(root), fallback=False)
    assert cache.get("chapters/labels.pkl") == "computed elsewhere"
    assert [info.key for info in cache.store.list()] == ["chapters/labels.pkl"]
    cache.put("chapters/labels.pkl", "computed here")
    assert not (root / "chapters" / "labels.pkl").is_symlink()
    assert cache.get("chapters/labels.pkl") == "computed here"
    assert elsewhere.get("chapters/labels.pkl") == "computed elsewhere"


def test_without_descriptor_calls_links_are_refused_by_a_check_before_each_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system has no descriptor-relative calls (Windows), folders are checked and then
    used by name: the weaker path, run here for real on this system."""
    monkeypatch.setattr(folders_module, "DESCRIPTORS", False)
    private = _victim_folder(tmp_path)
    before = _files(private)
    root = tmp_path / "cache"
    store = open_local(root)
    store.write("a/b/c.pkl", b"value")
    assert read_all(store, "a/b/c.pkl") == b"value" and [info.key for info in store.list()] == ["a/b/c.pkl"]
    assert store.delete("a/b/c.pkl") is True and store.read("a/b/c.pkl") is None
    os.symlink(private, root / "chapters")
    assert store.read("chapters/chapter_1.pkl") is None and store.stat("chapters/chapter_1.pkl") is None
    with pytest.raises(StoreUnavailable, match="a symbolic link"):
        store.write("chapters/chapter_2.pkl", b"over the victim's")
    assert store.delete("chapters/chapter_2.pkl") is False and store.cleanup(0) == 0
    assert _files(private) == before
