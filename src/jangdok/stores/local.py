"""A store in a local folder. Writes are atomic: a unique temporary file, then a rename.

Over an existing entry the rename is Linux's ``renameat2(RENAME_EXCHANGE)``: the new file takes
the key's name and the old one the temporary name in one atomic step, and is then unlinked. A
rename that *replaces* a file makes ext4 (``auto_da_alloc``) start writeback of the new file's data
inside the call, and the old file is freed there too: together about 30 ms for a 48 MB entry. An
exchange does neither; the unlink frees the old file, and the data is written back later. Where
there is no entry yet, and where the kernel, the C library or the file system lacks the call, it is
``os.replace``. Either way readers see the old file or the new one, never neither.

What the folder may hold besides entries, and how each operation treats it:

- A folder where an entry should be is not an entry: ``read``/``stat`` miss, ``delete`` returns
  ``False`` (folders are never removed), ``write`` raises ``StoreUnavailable`` saying a folder is
  in the way.
- A symbolic link counts as the file it points to. One that points nowhere (dangling, or a loop)
  is not an entry: ``read``/``stat`` miss, ``list`` skips it (a loop with a WARNING naming it),
  ``write`` replaces the link itself and ``delete`` removes it. Links to folders are not followed
  by ``list``.
- A named pipe (FIFO), a device or a socket under an entry's name (or a link to one: anyone who
  can write the folder can plant one) is not an entry: ``read``/``map`` miss at once, with a
  WARNING naming the path, instead of blocking on the pipe or reading the device; ``stat`` and
  ``list`` skip it; ``write`` replaces it.
- Names starting with :data:`~jangdok.location.TEMP_MARKER` are writes (or deletes) in progress,
  or what a killed process left; they are never listed and ``cleanup`` removes the old ones. A
  process killed between an exchange and its unlink leaves the *replaced* entry under such a
  name: it keeps that entry's old modification time, so the next ``cleanup`` removes it.

No ``OSError`` leaves this module: failures become :mod:`jangdok.errors` types naming the path.
"""

from __future__ import annotations

import errno
import io
import logging
import mmap
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from stat import S_IFMT, S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK
from typing import cast

from ..errors import AccessDenied, InvalidKey, StoreUnavailable
from ..location import TEMP_MARKER, Location, validate_key
from .base import Capabilities, Chunks, ObjectInfo, Reader, Store, check_range, iter_chunks

__all__ = ["LocalStore"]

# link() answers for file systems that have no hard links.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}

log = logging.getLogger("jangdok")

# Put a moved-aside symlinked entry back as the link itself, not as its target, where supported.
_LINK_NAME: dict[str, bool] = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}

# Python 3.13+ can map without keeping a duplicate descriptor open for each map's lifetime.
_MAP_OPTIONS: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# Entries are opened without blocking (a FIFO), without becoming a controlling terminal (a tty)
# and without leaking into child processes; O_BINARY is Windows' "no newline translation".
_NON_BLOCKING = getattr(os, "O_NONBLOCK", 0)
_OPEN_FOR_READING = (os.O_RDONLY | _NON_BLOCKING | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))


def _file_kind(mode: int) -> str:
    if S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if S_ISCHR(mode) or S_ISBLK(mode):
        return "a device"
    if S_ISSOCK(mode):
        return "a socket"
    return f"file type {S_IFMT(mode):o}"


def _iov_max() -> int:
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf; some systems no name
        return 1024
    return limit if limit > 0 else 1024


_IOV_MAX = _iov_max()


_PROGRESS_STEP = 8 << 20
"""With a progress callback, no system call writes more than this, so large chunks report too."""


def _batches(views: Iterable[memoryview], max_bytes: int) -> Iterator[list[memoryview]]:
    """Views grouped for writev: at most IOV_MAX views and ``max_bytes`` bytes (a view larger
    than that is sliced, which copies nothing)."""
    batch: list[memoryview] = []
    size = 0
    for view in views:
        while view.nbytes:
            part = view[:max_bytes - size]
            batch.append(part)
            size += part.nbytes
            view = view[part.nbytes:]
            if len(batch) == _IOV_MAX or size == max_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _write_batch(fd: int, batch: list[memoryview], wrote: Callable[[int], None]) -> None:
    """Write non-empty views in order, resuming after partial writes; the caller's buffers go
    to the kernel as they are, never copied here."""
    if not hasattr(os, "writev"):  # Windows
        for view in batch:
            while view.nbytes:
                count = os.write(fd, view)
                wrote(count)
                view = view[count:]
        return
    while batch:
        written = os.writev(fd, batch)
        if written <= 0:  # regular files never do this; never loop forever if one does
            raise OSError(errno.EIO, "the file accepted no bytes")
        wrote(written)
        done = 0
        while done < len(batch) and written >= batch[done].nbytes:
            written -= batch[done].nbytes
            done += 1
        batch = batch[done:]
        if written:  # partly written view: resume inside it
            batch[0] = batch[0][written:]


def _write_chunks(fd: int, data: Chunks, progress: Callable[[int], None] | None) -> None:
    total = 0

    def wrote(count: int) -> None:
        nonlocal total
        total += count
        if progress is not None:
            progress(total)

    max_bytes = sys.maxsize if progress is None else _PROGRESS_STEP
    if isinstance(data, (list, tuple)):  # all chunks at hand: one writev per IOV_MAX views
        groups: Iterable[list[memoryview]] = [list(iter_chunks(data))]
    else:
        # A generator may reuse its buffer or take its time: each chunk reaches the file before
        # the next is asked for (a live writer's file stays young for cleanup(); memory stays flat).
        groups = ([view] for view in iter_chunks(data))
    for views in groups:
        for batch in _batches(views, max_bytes):
            _write_batch(fd, batch, wrote)


class _Exchange:
    """``renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)`` through the C library: resolved on
    first use (no ctypes at import), switched off for the process when the C library or the kernel
    lacks it, and for one device when its file system does."""

    RENAME_EXCHANGE = 2
    AT_FDCWD = -100

    def __init__(self) -> None:
        self._resolved = False
        self._function: Callable[..., int] | None = None
        self._get_errno: Callable[[], int] = lambda: 0
        self.unsupported_devices: set[int] = set()

    def _resolve(self) -> Callable[..., int] | None:
        if not self._resolved:
            self._function = None
            if sys.platform.startswith("linux"):
                try:
                    import ctypes

                    function = ctypes.CDLL(None, use_errno=True).renameat2
                    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                    function.restype = ctypes.c_int
                    self._function, self._get_errno = function, ctypes.get_errno
                except (OSError, AttributeError, ImportError):  # no symbol (glibc < 2.28, some musl)
                    pass
            self._resolved = True
        return self._function

    def __call__(self, source: str, target: str, device: int) -> bool:
        """Swap two existing names atomically. ``False`` if nothing was swapped: the target is
        gone, the call is unavailable, or it failed; the caller then uses ``os.replace``, which
        does the job or reports the failure exactly as before."""
        if device in self.unsupported_devices:
            return False
        function = self._resolve()
        if function is None:
            return False
        if function(self.AT_FDCWD, os.fsencode(source), self.AT_FDCWD, os.fsencode(target),
                    self.RENAME_EXCHANGE) == 0:
            return True
        code = self._get_errno()
        if code == errno.ENOSYS:  # the kernel (or a seccomp filter) lacks it: off for the process
            self._function = None
        elif code in (errno.EINVAL, errno.EOPNOTSUPP):  # this file system cannot exchange
            self.unsupported_devices.add(device)
        return False


_exchange = _Exchange()


def _object_info(key: str, result: os.stat_result) -> ObjectInfo:
    # A replaced file is a new inode (os.replace), so inode, time and size identify a version.
    version = f"{result.st_ino}-{result.st_mtime_ns}-{result.st_size}"
    return ObjectInfo(key, result.st_size, result.st_mtime, version)


def _is_missing(exc: OSError) -> bool:
    """Errors meaning "no file there": gone, a file where a folder was expected, a symlink loop."""
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or exc.errno == errno.ELOOP


class _FileReader(Reader):
    """A file limited to ``[start, stop)``, so local and S3 range reads behave the same."""

    def __init__(self, key: str, file: io.BufferedIOBase | io.RawIOBase, start: int, stop: int | None,
                 error: Callable[[OSError], Exception]) -> None:
        super().__init__()
        self._file = file
        self._error = error
        self.info = _object_info(key, os.fstat(file.fileno()))
        end = self.info.size if stop is None else min(stop, self.info.size)
        self.size = max(0, end - start)
        self._remaining = self.size
        file.seek(start)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[: self._remaining]
        try:
            count = self._file.readinto(view)
        except OSError as exc:  # a failing disk: the caller sees a store error, never short data
            raise self._error(exc) from exc
        self._remaining -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


class LocalStore(Store):
    """Objects are files under ``location.root``; keys map to paths one segment per folder.

    With ``durable=True`` a write returns only once the entry survives a power cut: the data is
    fsynced before the rename and the folder after it (several milliseconds per write on most
    disks). Without it, a crash of the *machine* may leave an empty or missing entry (never a
    torn one under the key's name on journaling file systems); a crash of the process never can.
    (Replacing by exchange opts out of ext4's flush-on-replace heuristic, so without ``durable``
    a replaced entry, too, may be empty after a power cut within the writeback delay.)
    """

    name = "local"
    capabilities = Capabilities(shared=False, range_reads=True, conditional_delete=True, mapping=True)

    def __init__(self, location: Location, durable: bool = False) -> None:
        if location.is_s3:
            raise ValueError(f"LocalStore needs a folder, got {location.url}")
        self.location = location
        self.durable = durable

    def _os_error(self, exc: OSError, verb: str, path: str) -> Exception:
        if isinstance(exc, PermissionError):
            return AccessDenied(f"Local error {verb} {path}: permission denied; check the folder's owner and mode")
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidKey(f"Local error {verb} {path}: the name is too long for this file system")
        return StoreUnavailable(f"Local error {verb} {path}: {exc.strerror or exc}; check the disk and the folder")

    def _temp_path(self, folder: str) -> str:
        # A random suffix keeps concurrent writers (and deleters) out of each other's files.
        return os.path.join(folder, f"{TEMP_MARKER}{secrets.token_hex(8)}")

    def _open_entry(self, path: str, buffering: int = -1) -> io.BufferedIOBase | io.RawIOBase | None:
        """The entry's file opened for reading, or ``None`` where there is no entry: missing, a
        folder, a dangling link or a link loop, or anything but a regular file.

        Anyone who can write the folder can plant a FIFO, a device or a socket under an entry's
        name. Opening is non-blocking (a FIFO without a writer would block ``open`` forever,
        and a read of it until one appears), and what was opened is judged by ``fstat`` of the
        descriptor itself, so nothing can be swapped in between."""
        try:
            fd = os.open(path, _OPEN_FOR_READING)
        except IsADirectoryError:  # Windows, which cannot open folders
            return None
        except OSError as exc:
            if _is_missing(exc):
                return None
            if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
                self._not_a_file(path, "a socket or an absent device")
                return None
            raise self._os_error(exc, "loading", path) from exc
        try:
            mode = os.fstat(fd).st_mode
            if not S_ISREG(mode):
                if not S_ISDIR(mode):  # a folder is not an entry either, but nothing odd
                    self._not_a_file(path, _file_kind(mode))
                os.close(fd)
                return None
            if _NON_BLOCKING:
                os.set_blocking(fd, True)
            # A FileIO unbuffered, else a BufferedReader: typeshed says only BinaryIO.
            return cast("io.BufferedIOBase | io.RawIOBase", os.fdopen(fd, "rb", buffering=buffering))
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc, "loading", path) from exc

    def _not_a_file(self, path: str, kind: str) -> None:
        log.warning("Cache entry %s is not a regular file (%s): not an entry, treated as a miss; remove it",
                    path, kind, extra={"jangdok_event": "not_a_file", "jangdok_path": path})

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        check_range(start, stop)
        path = self.location.local_path(key)
        file = self._open_entry(path)
        if file is None:
            return None
        try:
            return _FileReader(key, file, start, stop, lambda exc: self._os_error(exc, "loading", path))
        except OSError as exc:
            file.close()
            raise self._os_error(exc, "loading", path) from exc

    def map(self, key: str) -> tuple[memoryview, ObjectInfo] | None:
        """The entry as a private copy-on-write map: pages are read on first touch, and writes to
        the view stay in this process. The map keeps the file it was made from, so it stays valid
        after the entry is replaced or deleted (this store never changes a file in place; a file
        truncated by hand under a map would make touching the lost pages fail with SIGBUS)."""
        path = self.location.local_path(key)
        file = self._open_entry(path, buffering=0)
        if file is None:
            return None
        with file:
            try:
                result = os.fstat(file.fileno())
                if not S_ISREG(result.st_mode):
                    return None
                info = _object_info(key, result)
                if result.st_size == 0:  # mmap cannot map 0 bytes
                    return memoryview(bytearray()), info
                mapped = mmap.mmap(file.fileno(), result.st_size, access=mmap.ACCESS_COPY, **_MAP_OPTIONS)
            except OSError as exc:
                raise self._os_error(exc, "loading", path) from exc
            except ValueError as exc:  # truncated by hand between fstat and mmap
                raise StoreUnavailable(f"Local error loading {path}: the file shrank while being mapped ({exc}); "
                                       "something outside the cache is writing to it") from exc
        return memoryview(mapped), info

    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        path = self.location.local_path(key)
        folder = os.path.dirname(path) or "."
        # Same folder as the target, so the rename stays within one file system and readers see
        # either the old file or the new one.
        temp = self._temp_path(folder)
        try:
            new_folders = not os.path.isdir(folder)
            if new_folders:
                os.makedirs(folder, exist_ok=True)
            with open(temp, "xb", buffering=0) as file:
                _write_chunks(file.fileno(), data, progress)
                if self.durable:  # the data must be on disk before its name can point at it
                    os.fsync(file.fileno())
                # A rename keeps inode, time and size: this is the version under the key's name.
                written = _object_info(key, os.fstat(file.fileno()))
            self._swap_in(temp, path)
            if self.durable:
                self._sync_folders(folder, new_folders)
            return written.version
        except BaseException as exc:
            try:  # cleanup only: the original error matters
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise self._write_error(exc, path, folder) from exc
            raise

    def _swap_in(self, temp: str, path: str) -> None:
        """Give the finished temporary file the key's name, atomically for readers.

        Over an existing entry the names are exchanged, then the old file (now under ``temp``)
        is unlinked. Concurrent writers each unlink whatever they swapped out, so the last
        exchange wins and no old file stays behind; a versioned delete that moved the entry aside
        makes the exchange fail with ENOENT, and ``os.replace`` then writes as it always did.
        """
        try:
            current = os.lstat(path)
        except OSError:
            current = None  # missing, or unreachable: os.replace says which
        if current is None or S_ISDIR(current.st_mode) or not _exchange(temp, path, current.st_dev):
            os.replace(temp, path)  # a folder in the way fails here, with the usual message
            return
        try:
            os.unlink(temp)
        except FileNotFoundError:  # a cleanup() found the old entry's old time and took it
            return
        except OSError as exc:
            if os.path.isdir(temp):
                self._give_back_folder(temp, path)
            log.warning("Saved %s, but the entry it replaced stays at %s: %s; cleanup() removes it", path, temp,
                        exc.strerror or exc, extra={"jangdok_event": "replaced_entry_kept", "jangdok_path": temp})

    def _give_back_folder(self, temp: str, path: str) -> None:
        """A folder took the entry's name between the check and the exchange (it was deleted and
        a key below it written): as with os.replace, the folder stays and the write fails."""
        if not _exchange(temp, path, os.lstat(temp).st_dev):
            raise StoreUnavailable(f"Local error saving {path}: a folder that appeared there meanwhile was moved to "
                                   f"{temp} and could not be put back; rename it to {path}")
        # What comes back is this write's file, or (had another writer exchanged in between) its
        # file, which the folder displaced just as it would have made that writer fail.
        os.unlink(temp)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)

    def _write_error(self, exc: OSError, path: str, folder: str) -> Exception:
        """Say what is in the way when a file or folder occupies a name the key needs."""
        # EACCES: what Windows says when renaming onto a folder.
        if exc.errno in (errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EACCES) and os.path.isdir(path):
            return StoreUnavailable(f"Local error saving {path}: a folder is in the way at {path}; "
                                    "remove or rename it (entries are files)")
        if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
            blocker = folder
            while os.path.dirname(blocker) not in ("", blocker) and not os.path.isdir(os.path.dirname(blocker)):
                blocker = os.path.dirname(blocker)  # climb to the topmost name that is not a folder
            return StoreUnavailable(f"Local error saving {path}: {blocker} is in the way (it is not a folder); "
                                    "remove or rename it, or use another key")
        return self._os_error(exc, "saving", path)

    def _sync_folders(self, folder: str, new_folders: bool) -> None:
        """Make the rename durable: it lives in the folder's entries. New folders' own names live
        in their parents', so those are synced too, up to the root's parent."""
        if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open folders; NTFS journals renames
            return
        stop = os.path.dirname(os.path.abspath(self.location.root))
        current = os.path.abspath(folder)
        while True:
            fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not new_folders or current == stop or os.path.dirname(current) == current:
                return
            current = os.path.dirname(current)

    def delete(self, key: str, version: str | None = None) -> bool:
        path = self.location.local_path(key)
        if version is None:
            return self._unlink(path)
        current = self.stat(key)  # answers the usual miss or mismatch without moving anything
        if current is None or current.version != version:
            return False
        # Stat-then-unlink could remove a good entry written in between. Renaming is atomic:
        # once the file is aside no writer can replace it, so we judge exactly what we took.
        aside = self._temp_path(os.path.dirname(path) or ".")
        try:
            os.rename(path, aside)
        except OSError as exc:
            if _is_missing(exc):  # deleted or replaced by a folder meanwhile
                return False
            raise self._os_error(exc, "deleting", path) from exc
        try:
            taken = os.stat(aside)  # follows a symlinked entry, as stat() and read() do
        except OSError:
            taken = None  # a dangling link or loop raced in: not the version asked for
        if taken is not None and S_ISREG(taken.st_mode) and _object_info(key, taken).version == version:
            self._remove_aside(aside, path)
            return True
        self._put_back(aside, path)
        return False

    def _unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
        except OSError as exc:
            if _is_missing(exc) or os.path.isdir(path):  # a folder is not an entry: never removed
                return False
            raise self._os_error(exc, "deleting", path) from exc
        return True

    def _remove_aside(self, aside: str, path: str) -> None:
        try:
            os.unlink(aside)
        except OSError as exc:
            raise StoreUnavailable(f"Local error deleting {path}: the entry was moved to {aside} but could not be "
                                   f"removed there ({exc.strerror or exc}); cleanup() removes it later") from exc

    def _put_back(self, aside: str, path: str) -> None:
        """Return a newer entry a versioned delete took by mistake, unless a newer one still
        arrived meanwhile: link() never replaces, so the newest entry always wins."""
        try:
            if S_ISDIR(os.lstat(aside).st_mode):  # a folder raced in; link() cannot take folders
                os.rename(aside, path)
                return
            try:
                os.link(aside, path, **_LINK_NAME)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                # A file system without hard links (FAT, some network mounts): a rename, which
                # could replace an entry written in this instant, beats stranding this one.
                if not os.path.lexists(path):
                    os.rename(aside, path)
                    return
            os.unlink(aside)
        except OSError as exc:
            raise StoreUnavailable(f"Local error deleting {path}: a newer entry was moved aside to {aside} and could "
                                   f"not be put back ({exc.strerror or exc}); rename it to {path}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.location.local_path(key)
        try:
            result = os.stat(path)
        except OSError as exc:
            if _is_missing(exc):
                return None
            raise self._os_error(exc, "checking", path) from exc
        if not S_ISREG(result.st_mode):
            return None
        return _object_info(key, result)

    def _walk(self, prefix: str, verb: str) -> Iterator[tuple[str, str, list[str]]]:
        """``(folder, key prefix of its entries, file names)`` for every folder that can hold
        keys starting with ``prefix``. The walk starts in the deepest folder the prefix names,
        so ``list("chapters/")`` never reads the rest of the cache."""
        top = prefix.rpartition("/")[0]
        try:
            start = self.location.local_path(top) if top else self.location.root
        except InvalidKey:
            return  # no key lies in a folder with a malformed name

        def unreadable(exc: OSError) -> None:
            if not _is_missing(exc):  # a missing folder is an empty one
                raise self._os_error(exc, verb, exc.filename or start) from exc

        for folder, dirs, files in os.walk(start, onerror=unreadable):
            relative = os.path.relpath(folder, self.location.root)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            # Prune before descending, so folders outside the prefix are never read. Below the
            # start folder the rest of the prefix has no "/", so this test is enough.
            dirs[:] = sorted(d for d in dirs if (base + d + "/").startswith(prefix))
            yield folder, base, sorted(files)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for folder, base, names in self._walk(prefix, "listing"):
            for name in names:
                key = base + name
                if not key.startswith(prefix):
                    continue
                path = os.path.join(folder, name)
                try:
                    validate_key(key)  # temporary files and names S3 could not hold either
                    result = os.stat(path)
                except InvalidKey:
                    continue
                except FileNotFoundError:  # deleted while we listed, or a dangling link
                    continue
                except OSError as exc:  # one bad name (a symlink loop) must not hide the rest
                    log.warning("Skipped %s while listing the cache: %s; remove or fix it", path,
                                exc.strerror or exc, extra={"jangdok_event": "list_skipped", "jangdok_path": path})
                    continue
                if S_ISREG(result.st_mode):
                    yield _object_info(key, result)

    def cleanup(self, older_than: float, prefix: str = "") -> int:
        """Remove temporary files last modified more than ``older_than`` seconds ago, in the
        folders ``list(prefix)`` would read. A live writer's file is modified with every chunk,
        so ``older_than`` only has to exceed the longest pause inside one write. An entry a
        killed writer had just swapped out keeps its old time, so it goes at the first cleanup."""
        cutoff = time.time() - older_than
        removed = 0
        for folder, _base, names in self._walk(prefix, "cleaning up"):
            for name in names:
                if not name.startswith(TEMP_MARKER):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.lstat(path).st_mtime >= cutoff:
                        continue
                    os.unlink(path)
                except FileNotFoundError:  # its writer finished, or another cleanup was faster
                    continue
                except OSError as exc:
                    raise self._os_error(exc, "cleaning up", path) from exc
                removed += 1
        return removed
