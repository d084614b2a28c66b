"""A store in a local folder. Writes are atomic: a unique temporary file, then a rename.

Over an existing entry the rename is Linux's ``renameat2(RENAME_EXCHANGE)``: the new file takes
the key's name and the old one the temporary name in one atomic step, and is then unlinked. A
rename that *replaces* a file makes ext4 (``auto_da_alloc``) start writeback of the new file's data
inside the call, and the old file is freed there too: together about 30 ms for a 48 MB entry. An
exchange does neither; the unlink frees the old file, and the data is written back later. Where
there is no entry yet, and where the kernel, the C library or the file system lacks the call, it is
``os.replace``. Either way readers see the old file or the new one, never neither.

What the folder may hold besides entries, and how each operation treats it:

- Below the root, no folder is ever reached through a symbolic link (see :mod:`jangdok.folders`):
  each is opened relative to its parent's descriptor, refusing links, and files are then opened,
  renamed and removed relative to the folder's descriptor, so a link planted (or swapped in) where
  a key's folder goes can never send a read, a write or a delete outside the root. Such a link is
  not a folder of the cache: ``read``/``map``/``stat`` miss with a WARNING naming it, ``delete``
  returns ``False``, ``write`` raises ``StoreUnavailable`` naming it, and ``list`` and ``cleanup``
  do not enter it. The root itself may be a link (a cache on another disk): it is the user's.
- A folder where an entry should be is not an entry: ``read``/``stat`` miss, ``delete`` returns
  ``False`` (folders are never removed), ``write`` raises ``StoreUnavailable`` saying a folder is
  in the way.
- A symbolic link at an entry's own name counts, for reading, as the file it points to (``read``,
  ``map``, ``stat``, ``list``): reading writes nothing, and what is read is judged as any entry is.
  Nothing that changes the folder goes through it: ``write`` replaces the link itself, and
  ``delete`` (as of damage found through it) removes the link, never the file it points to. One
  that points nowhere (dangling, or a loop) is not an entry: ``read``/``stat`` miss, ``list``
  skips it (a loop with a WARNING naming it).
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
import logging
import mmap
import os
import sys
import time
from collections.abc import Callable, Iterator
from stat import S_IFMT, S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

from ..errors import AccessDenied, InvalidKey, StoreUnavailable
from ..folders import Folder, open_folder
from ..location import TEMP_MARKER, Location, validate_key
from . import filewrite
from .base import Capabilities, Chunks, ObjectInfo, Reader, Store, check_range

__all__ = ["LocalStore"]

# link() answers for file systems that have no hard links.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}

log = logging.getLogger("jangdok")

# Put a moved-aside symlinked entry back as the link itself, not as its target, where supported.
# (follow_symlinks=True is every platform's default, so passing it where False is unsupported is safe.)
_LINK_FOLLOWS = os.link not in os.supports_follow_symlinks
# Record a use on a link itself, never on what it points to, where supported.
_TIMES_FOLLOW = os.utime not in os.supports_follow_symlinks

# Python 3.13+ can map without keeping a duplicate descriptor open for each map's lifetime.
_MAP_OPTIONS: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# Entries are opened without blocking (a FIFO), without becoming a controlling terminal (a tty)
# and without leaking into child processes; O_BINARY is Windows' "no newline translation".
_NON_BLOCKING = getattr(os, "O_NONBLOCK", 0)
_OPEN_FOR_READING = (os.O_RDONLY | _NON_BLOCKING | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
# O_EXCL creates a new file, never opening what a name (or a link there) already holds.
_CREATE_FOR_WRITING = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                       | getattr(os, "O_BINARY", 0))
# Reads land in the caller's buffer with readv (POSIX); elsewhere with a read and a copy.
_READV = hasattr(os, "readv")


def _file_kind(mode: int) -> str:
    if S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if S_ISCHR(mode) or S_ISBLK(mode):
        return "a device"
    if S_ISSOCK(mode):
        return "a socket"
    return f"file type {S_IFMT(mode):o}"


def _version(result: os.stat_result) -> str:
    # A replaced file is a new inode (os.replace), so inode, time and size identify a version.
    return f"{result.st_ino}-{result.st_mtime_ns}-{result.st_size}"


def _object_info(key: str, result: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, result.st_size, result.st_mtime, _version(result))


def _is_missing(exc: OSError) -> bool:
    """Errors meaning "no file there": gone, a file where a folder was expected, a symlink loop
    at an entry, or a link where a folder goes (never followed: see :mod:`jangdok.folders`)."""
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or exc.errno == errno.ELOOP


class _FileReader(Reader):
    """A file limited to ``[start, stop)``, so local and S3 range reads behave the same.

    It reads the descriptor itself, straight into the caller's buffer (a small entry whole, in
    one call): a file object on it would add a buffer, a copy, and system calls to set them up."""

    def __init__(self, key: str, fd: int, found: os.stat_result, start: int, stop: int | None,
                 error: Callable[[OSError], Exception]) -> None:
        self._fd = fd
        self._error = error
        self.info = _object_info(key, found)
        end = self.info.size if stop is None else min(stop, self.info.size)
        self.size = max(0, end - start)
        self._remaining = self.size
        if start:
            os.lseek(fd, start, os.SEEK_SET)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[: self._remaining]
        try:
            if _READV:
                count = os.readv(self._fd, [view])
            else:  # Windows: a read, and a copy
                data = os.read(self._fd, view.nbytes)
                count = len(data)
                view[:count] = data
        except OSError as exc:  # a failing disk: the caller sees a store error, never short data
            raise self._error(exc) from exc
        self._remaining -= count
        return count

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
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
        self._root = Folder(location.root, None)  # reached by its name, so never closed: one serves every write

    def _os_error(self, exc: OSError, verb: str, path: str) -> Exception:
        if isinstance(exc, PermissionError):
            return AccessDenied(f"Local error {verb} {path}: permission denied; check the folder's owner and mode")
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidKey(f"Local error {verb} {path}: the name is too long for this file system")
        return StoreUnavailable(f"Local error {verb} {path}: {exc.strerror or exc}; check the disk and the folder")

    def _names(self, key: str) -> tuple[str, list[str], str]:
        """The key's path (for messages; checking the key), its folders and its file name."""
        path = self.location.local_path(key)
        *folders, name = key.split("/")
        return path, folders, name

    def _folder(self, folders: list[str], path: str, verb: str) -> Folder | None:
        """The folder an entry lives in, reached without following links; ``None`` where there
        is none: missing, a file in its place, or a symbolic link (with a WARNING)."""
        try:
            return open_folder(self.location.root, folders)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                log.warning("Cache folder %s is a symbolic link: links below the cache root are never followed, so "
                            "the entries below it are misses; put a folder there, or make the cache root the folder "
                            "it points to", exc.filename,
                            extra={"jangdok_event": "folder_link", "jangdok_path": exc.filename})
                return None
            if _is_missing(exc):
                return None
            raise self._os_error(exc, verb, path) from exc

    def _temp_name(self) -> str:
        # A random suffix keeps concurrent writers (and deleters) out of each other's files.
        return TEMP_MARKER + os.urandom(8).hex()

    def _open_entry(self, key: str) -> tuple[tuple[int, os.stat_result] | None, str]:
        """A descriptor of the entry's file, opened for reading, with what ``fstat`` said of it
        (``None`` where there is no entry: missing, a folder, a dangling link or a link loop, or
        anything but a regular file), and its path.

        Anyone who can write the folder can plant a FIFO, a device or a socket under an entry's
        name. Opening is non-blocking (a FIFO without a writer would block ``open`` forever,
        and a read of it until one appears), and what was opened is judged by ``fstat`` of the
        descriptor itself, so nothing can be swapped in between."""
        path, folders, name = self._names(key)
        if not folders:  # in the root, which is reached by its name: no folder to walk
            return self._open_file(path, None, path)
        folder = self._folder(folders, path, "loading")
        if folder is None:
            return None, path
        with folder:
            return self._open_file(folder.at(name), folder.fd, path)

    def _open_file(self, name: str, dir_fd: int | None, path: str) -> tuple[tuple[int, os.stat_result] | None, str]:
        try:
            fd = os.open(name, _OPEN_FOR_READING, dir_fd=dir_fd)
        except IsADirectoryError:  # Windows, which cannot open folders
            return None, path
        except OSError as exc:
            if _is_missing(exc):
                return None, path
            if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
                self._not_a_file(path, "a socket or an absent device")
                return None, path
            raise self._os_error(exc, "loading", path) from exc
        try:
            found = os.fstat(fd)
            if not S_ISREG(found.st_mode):
                if not S_ISDIR(found.st_mode):  # a folder is not an entry either, but nothing odd
                    self._not_a_file(path, _file_kind(found.st_mode))
                os.close(fd)
                return None, path
            if _NON_BLOCKING:
                os.set_blocking(fd, True)
            return (fd, found), path
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc, "loading", path) from exc

    def _not_a_file(self, path: str, kind: str) -> None:
        log.warning("Cache entry %s is not a regular file (%s): not an entry, treated as a miss; remove it",
                    path, kind, extra={"jangdok_event": "not_a_file", "jangdok_path": path})

    def path(self, key: str) -> str:
        return self.location.local_path(key)

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        if start or stop is not None:
            check_range(start, stop)
        opened, path = self._open_entry(key)
        if opened is None:
            return None
        fd, found = opened
        try:
            return _FileReader(key, fd, found, start, stop, lambda exc: self._os_error(exc, "loading", path))
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc, "loading", path) from exc

    def map(self, key: str) -> tuple[memoryview, ObjectInfo] | None:
        """The entry as a private copy-on-write map: pages are read on first touch, and writes to
        the view stay in this process. The map keeps the file it was made from, so it stays valid
        after the entry is replaced or deleted (this store never changes a file in place; a file
        truncated by hand under a map would make touching the lost pages fail with SIGBUS)."""
        opened, path = self._open_entry(key)
        if opened is None:
            return None
        fd, found = opened
        try:
            info = _object_info(key, found)
            if found.st_size == 0:  # mmap cannot map 0 bytes
                return memoryview(bytearray()), info
            mapped = mmap.mmap(fd, found.st_size, access=mmap.ACCESS_COPY, **_MAP_OPTIONS)
        except OSError as exc:
            raise self._os_error(exc, "loading", path) from exc
        except ValueError as exc:  # truncated by hand between fstat and mmap
            raise StoreUnavailable(f"Local error loading {path}: the file shrank while being mapped ({exc}); "
                                   "something outside the cache is writing to it") from exc
        finally:
            os.close(fd)
        return memoryview(mapped), info

    def write(self, key: str, data: Chunks, progress: Callable[[int], None] | None = None) -> str:
        path, folders, name = self._names(key)
        if folders:
            with self._folder_for_writing(folders, path) as folder:
                return self._write_in(folder, folders, name, path, data, progress)
        # Most keys live in the root, which is there once anything was written: it is made only
        # when a file cannot be created in it (not made yet, or removed since).
        return self._write_in(self._root, folders, name, path, data, progress)

    def _write_in(self, folder: Folder, folders: list[str], name: str, path: str, data: Chunks,
                  progress: Callable[[int], None] | None) -> str:
        # Same folder as the target, so the rename stays within one file system and readers see
        # either the old file or the new one.
        temp = self._temp_name()
        try:
            try:
                fd = os.open(folder.at(temp), _CREATE_FOR_WRITING, 0o666, dir_fd=folder.fd)
            except (FileNotFoundError, NotADirectoryError):
                if folder is not self._root:
                    raise
                folder = self._folder_for_writing(folders, path)  # made, or an error saying what is in the way
                fd = os.open(folder.at(temp), _CREATE_FOR_WRITING, 0o666, dir_fd=folder.fd)
            try:
                filewrite.write_chunks(fd, data, progress)
                if self.durable:  # the data must be on disk before its name can point at it
                    os.fsync(fd)
                # A rename keeps inode, time and size: this is the version under the key's name.
                version = _version(os.fstat(fd))
            finally:
                os.close(fd)
            self._swap_in(folder, temp, name, path)
            if self.durable:
                self._sync_folders(folder, folders)
            return version
        except BaseException as exc:
            try:  # cleanup only: the original error matters
                os.unlink(folder.at(temp), dir_fd=folder.fd)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise self._write_error(exc, path, folder, name) from exc
            raise

    def _folder_for_writing(self, folders: list[str], path: str) -> Folder:
        """The folder an entry is written in, made (with any missing above it) if missing."""
        try:
            return open_folder(self.location.root, folders, create=True)
        except OSError as exc:
            raise self._write_error(exc, path) from exc

    def _swap_in(self, folder: Folder, temp: str, name: str, path: str) -> None:
        """Give the finished temporary file the key's name, atomically for readers.

        Over an existing entry the names are exchanged, then the old file (now under ``temp``)
        is unlinked. Concurrent writers each unlink whatever they swapped out, so the last
        exchange wins and no old file stays behind; a versioned delete that moved the entry aside
        makes the exchange fail with ENOENT, and ``os.replace`` then writes as it always did.
        """
        try:
            current = os.lstat(folder.at(name), dir_fd=folder.fd)
        except OSError:
            current = None  # missing, or unreachable: os.replace says which
        if current is None or S_ISDIR(current.st_mode) or not filewrite.exchange(folder, temp, name, current.st_dev):
            # A folder in the way fails here, with the usual message.
            os.replace(folder.at(temp), folder.at(name), src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            return
        try:
            os.unlink(folder.at(temp), dir_fd=folder.fd)
        except FileNotFoundError:  # a cleanup() found the old entry's old time and took it
            return
        except OSError as exc:
            if self._is_folder(folder, temp):
                self._give_back_folder(folder, temp, name, path)
            aside = os.path.join(folder.path, temp)
            log.warning("Saved %s, but the entry it replaced stays at %s: %s; cleanup() removes it", path, aside,
                        exc.strerror or exc, extra={"jangdok_event": "replaced_entry_kept", "jangdok_path": aside})

    def _give_back_folder(self, folder: Folder, temp: str, name: str, path: str) -> None:
        """A folder took the entry's name between the check and the exchange (it was deleted and
        a key below it written): as with os.replace, the folder stays and the write fails."""
        if not filewrite.exchange(folder, temp, name, os.lstat(folder.at(temp), dir_fd=folder.fd).st_dev):
            aside = os.path.join(folder.path, temp)
            raise StoreUnavailable(f"Local error saving {path}: a folder that appeared there meanwhile was moved to "
                                   f"{aside} and could not be put back; rename it to {path}")
        # What comes back is this write's file, or (had another writer exchanged in between) its
        # file, which the folder displaced just as it would have made that writer fail.
        os.unlink(folder.at(temp), dir_fd=folder.fd)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)

    @staticmethod
    def _is_folder(folder: Folder, name: str) -> bool:
        try:
            return S_ISDIR(os.lstat(folder.at(name), dir_fd=folder.fd).st_mode)
        except OSError:
            return False

    def _write_error(self, exc: OSError, path: str, folder: Folder | None = None, name: str = "") -> Exception:
        """Say what is in the way when a file, folder or link occupies a name the key needs."""
        # EACCES: what Windows says when renaming onto a folder.
        if (folder is not None and exc.errno in (errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EACCES)
                and self._is_folder(folder, name)):
            return StoreUnavailable(f"Local error saving {path}: a folder is in the way at {path}; "
                                    "remove or rename it (entries are files)")
        if folder is None and exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
            blocker = exc.filename or path  # the walk names the first name that is not a folder
            what = ("a symbolic link, never followed below the cache root" if exc.errno == errno.ELOOP
                    else "it is not a folder")
            return StoreUnavailable(f"Local error saving {path}: {blocker} is in the way ({what}); "
                                    "remove or rename it, or use another key")
        return self._os_error(exc, "saving", path)

    def _sync_folders(self, folder: Folder, folders: list[str]) -> None:
        """Make the rename durable: it lives in the folder's entries. New folders' own names live
        in their parents', so those are synced too, up to the root's parent."""
        if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open folders; NTFS journals renames
            return
        _sync_folder(folder)
        if not folder.created:
            return
        for depth in range(len(folders) - 1, -1, -1):
            with open_folder(self.location.root, folders[:depth]) as parent:
                _sync_folder(parent)
        _sync_folder(Folder(os.path.dirname(os.path.abspath(self.location.root)), None))

    def delete(self, key: str, version: str | None = None) -> bool:
        path, folders, name = self._names(key)
        folder = self._folder(folders, path, "deleting")
        if folder is None:
            return False
        with folder:
            if version is None:
                return self._unlink(folder, name, path)
            return self._delete_version(key, folder, name, path, version)

    def _delete_version(self, key: str, folder: Folder, name: str, path: str, version: str) -> bool:
        try:  # the usual miss or mismatch is answered without moving anything
            current = os.stat(folder.at(name), dir_fd=folder.fd)
        except OSError as exc:
            if _is_missing(exc):
                return False
            raise self._os_error(exc, "checking", path) from exc
        if not S_ISREG(current.st_mode) or _version(current) != version:
            return False
        # Stat-then-unlink could remove a good entry written in between. Renaming is atomic:
        # once the file is aside no writer can replace it, so we judge exactly what we took.
        aside = self._temp_name()
        try:
            os.rename(folder.at(name), folder.at(aside), src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
        except OSError as exc:
            if _is_missing(exc):  # deleted or replaced by a folder meanwhile
                return False
            raise self._os_error(exc, "deleting", path) from exc
        try:
            taken = os.stat(folder.at(aside), dir_fd=folder.fd)  # follows a symlinked entry, as stat() does
        except OSError:
            taken = None  # a dangling link or loop raced in: not the version asked for
        if taken is not None and S_ISREG(taken.st_mode) and _version(taken) == version:
            self._remove_aside(folder, aside, path)
            return True
        self._put_back(folder, aside, name, path)
        return False

    def _unlink(self, folder: Folder, name: str, path: str) -> bool:
        try:
            os.unlink(folder.at(name), dir_fd=folder.fd)  # a link itself, never what it points to
        except OSError as exc:
            if _is_missing(exc) or self._is_folder(folder, name):  # a folder is not an entry: never removed
                return False
            raise self._os_error(exc, "deleting", path) from exc
        return True

    def _remove_aside(self, folder: Folder, aside: str, path: str) -> None:
        try:
            os.unlink(folder.at(aside), dir_fd=folder.fd)
        except OSError as exc:
            raise StoreUnavailable(f"Local error deleting {path}: the entry was moved to "
                                   f"{os.path.join(folder.path, aside)} but could not be removed there "
                                   f"({exc.strerror or exc}); cleanup() removes it later") from exc

    def _put_back(self, folder: Folder, aside: str, name: str, path: str) -> None:
        """Return a newer entry a versioned delete took by mistake, unless a newer one still
        arrived meanwhile: link() never replaces, so the newest entry always wins."""
        names = {"src_dir_fd": folder.fd, "dst_dir_fd": folder.fd}
        try:
            if self._is_folder(folder, aside):  # a folder raced in; link() cannot take folders
                os.rename(folder.at(aside), folder.at(name), **names)
                return
            try:
                os.link(folder.at(aside), folder.at(name), src_dir_fd=folder.fd, dst_dir_fd=folder.fd,
                        follow_symlinks=_LINK_FOLLOWS)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                # A file system without hard links (FAT, some network mounts): a rename, which
                # could replace an entry written in this instant, beats stranding this one.
                if not _exists(folder, name):
                    os.rename(folder.at(aside), folder.at(name), **names)
                    return
            os.unlink(folder.at(aside), dir_fd=folder.fd)
        except OSError as exc:
            raise StoreUnavailable(f"Local error deleting {path}: a newer entry was moved aside to "
                                   f"{os.path.join(folder.path, aside)} and could not be put back "
                                   f"({exc.strerror or exc}); rename it to {path}") from exc

    def _stat(self, key: str, follow_symlinks: bool) -> os.stat_result | None:
        path, folders, name = self._names(key)
        folder = self._folder(folders, path, "checking")
        if folder is None:
            return None
        with folder:
            try:
                return os.stat(folder.at(name), dir_fd=folder.fd, follow_symlinks=follow_symlinks)
            except OSError as exc:
                if _is_missing(exc):
                    return None
                raise self._os_error(exc, "checking", path) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        result = self._stat(key, follow_symlinks=True)
        if result is None or not S_ISREG(result.st_mode):
            return None
        return _object_info(key, result)

    def touch(self, key: str) -> None:
        """Record a use of ``key`` in its file's access time (the local tier orders its copies by
        it); its modification time, and so its version, stay. A link is touched itself."""
        path, folders, name = self._names(key)
        folder = self._folder(folders, path, "recording the use of")
        if folder is None:
            return
        with folder:
            try:
                modified = os.stat(folder.at(name), dir_fd=folder.fd, follow_symlinks=False).st_mtime_ns
                os.utime(folder.at(name), ns=(time.time_ns(), modified), dir_fd=folder.fd,
                         follow_symlinks=_TIMES_FOLLOW)
            except OSError as exc:
                if not _is_missing(exc):
                    raise self._os_error(exc, "recording the use of", path) from exc

    def last_used(self, key: str) -> float | None:
        """When ``key`` was last used (see :meth:`touch`), or ``None`` if it is missing."""
        result = self._stat(key, follow_symlinks=False)
        return None if result is None else result.st_atime

    def _walk(self, prefix: str, verb: str) -> Iterator[tuple[Folder, str, Iterator[str]]]:
        """``(folder, key prefix of its entries, names that are not folders)`` for every folder
        that can hold keys starting with ``prefix``, never entering a link. The walk starts in
        the deepest folder the prefix names, so ``list("chapters/")`` never reads the rest of the
        cache. Each folder stays open while its subfolders are walked (as ``os.fwalk`` does):
        a subfolder is opened relative to it, so one renamed meanwhile cannot lead elsewhere.

        A folder's names are read as the caller takes them, in the file system's order, never
        held all at once: a folder of 100,000 entries costs the memory of one of ten. Only the
        names of subfolders are kept, to be walked next, in sorted order."""
        top = prefix.rpartition("/")[0]
        try:
            path = self.location.local_path(top) if top else self.location.root
        except InvalidKey:
            return  # no key lies in a folder with a malformed name
        start = self._folder(top.split("/") if top else [], path, verb)
        if start is None:
            return
        open_folders = [start]
        try:
            yield from self._descend(open_folders, top + "/" if top else "", prefix, verb)
        finally:
            for folder in open_folders:
                folder.close()

    def _descend(self, open_folders: list[Folder], base: str, prefix: str,
                 verb: str) -> Iterator[tuple[Folder, str, Iterator[str]]]:
        """Walk ``open_folders[-1]``, depth first, with a stack instead of recursion: a tree
        deeper than Python's recursion limit is no reason to fail."""
        pending: list[tuple[str, list[str]]] = []  # per open folder: its base, subfolders left
        while True:
            folder = open_folders[-1]
            subfolders: list[str] = []
            names = self._files_in(folder, base, prefix, subfolders, verb)
            yield folder, base, names
            for _ in names:  # the names the caller did not take: the subfolders may be among them
                pass
            pending.append((base, sorted(subfolders, reverse=True)))
            while pending:
                parent_base, subfolders = pending[-1]
                if subfolders:
                    name = subfolders.pop()
                    try:
                        open_folders.append(open_folders[-1].child(name))
                    except OSError as exc:
                        if _is_missing(exc):  # removed, or swapped for a file or a link meanwhile
                            continue
                        raise self._os_error(exc, verb, os.path.join(open_folders[-1].path, name)) from exc
                    base = parent_base + name + "/"
                    break
                pending.pop()
                open_folders.pop().close()
            else:
                return

    def _files_in(self, folder: Folder, base: str, prefix: str, subfolders: list[str], verb: str) -> Iterator[str]:
        """The names in ``folder`` that are not folders, as they are read; the names of its
        subfolders that can hold keys starting with ``prefix`` are added to ``subfolders``."""
        try:
            for name, is_folder in folder.entries():
                if not is_folder:
                    yield name
                # Pruned before descending, so folders outside the prefix are never read. Below
                # the start folder the rest of the prefix has no "/", so this test is enough.
                elif (base + name + "/").startswith(prefix):
                    subfolders.append(name)
        except OSError as exc:
            if not _is_missing(exc):  # a folder removed meanwhile is an empty one
                raise self._os_error(exc, verb, folder.path) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for folder, base, names in self._walk(prefix, "listing"):
            for name in names:
                key = base + name
                if not key.startswith(prefix):
                    continue
                try:
                    validate_key(key)  # temporary files and names S3 could not hold either
                    result = os.stat(folder.at(name), dir_fd=folder.fd)  # an entry's link counts as its file
                except InvalidKey:
                    continue
                except FileNotFoundError:  # deleted while we listed, or a dangling link
                    continue
                except OSError as exc:  # one bad name (a symlink loop) must not hide the rest
                    path = os.path.join(folder.path, name)
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
                try:
                    if os.lstat(folder.at(name), dir_fd=folder.fd).st_mtime >= cutoff:
                        continue
                    os.unlink(folder.at(name), dir_fd=folder.fd)
                except FileNotFoundError:  # its writer finished, or another cleanup was faster
                    continue
                except OSError as exc:
                    raise self._os_error(exc, "cleaning up", os.path.join(folder.path, name)) from exc
                removed += 1
        return removed


def _exists(folder: Folder, name: str) -> bool:
    try:
        os.lstat(folder.at(name), dir_fd=folder.fd)
    except FileNotFoundError:
        return False
    return True


def _sync_folder(folder: Folder) -> None:
    if folder.fd is not None:
        os.fsync(folder.fd)
        return
    fd = os.open(folder.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
