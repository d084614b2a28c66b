"""An exclusive lock on a file, held through ``flock``: the OS releases it when its holder
dies, however it dies, so a crash can never leave a lock that nobody can take.

Each acquisition opens the file anew, so threads of one process exclude each other as
processes do. A holder that removes the file on release makes it disappear from the folder;
a process that opened it just before then locks a file nobody else can see, so ``acquire``
checks that the file it locked is still the one under the name, and tries again if not.

Lock files live in folders others may write (a shared cache folder), so nothing is reached by
name: the lock's folder is reached from the root without following links (see
:mod:`jangdok.folders`), the file is opened relative to it without following a link
(``O_NOFOLLOW``), and used only if it is a regular file with no other name (a hard link to a
victim's file is the other way to make a writer write where it should not). Its text (who
holds it) is read and written only through the locked descriptor, never by reopening the name,
which could meanwhile be anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .folders import Folder, open_folder

__all__ = ["FileLock"]

_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
# What a lock's text may hold; anything longer was not written by a holder, and is read as nothing.
_MAX_TEXT = 64 * 1024


class FileLock:
    """The lock file ``name`` (``/``-separated) below the folder ``root``.

    Raises ``OSError`` when the lock cannot be used: the folder cannot hold a lock file
    (permissions, a read-only file system), or something else than a regular file of one name
    has the lock's name (``EINVAL``), or a link is where the lock or one of its folders goes
    (``ELOOP``), or a file is where a folder goes (``ENOTDIR``)."""

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        *self._folders, self._name = name.split("/")
        self.path = os.path.join(root, *self._folders, self._name)
        self._fd: int | None = None
        self._folder: Folder | None = None
        self.text = b""
        """What the lock file said when it was last opened: its holder's text (up to 64 KiB)."""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, ``False`` at once if another holder has it.
        Either way :attr:`text` says what the file held."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        while True:
            folder = open_folder(self.root, self._folders, create=True)
            try:
                fd = os.open(folder.at(self._name), _FLAGS, 0o644, dir_fd=folder.fd)
            except FileNotFoundError:  # a releasing holder removed the folder just now: again
                folder.close()
                continue
            except OSError as exc:
                folder.close()
                if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: what O_NOFOLLOW says on FreeBSD
                    raise OSError(errno.ELOOP, "a symbolic link, never followed in a cache folder",
                                  self.path) from None
                raise
            try:
                taken = self._lock(fd, blocking)
            except BaseException:
                os.close(fd)
                folder.close()
                raise
            if taken and self._current(folder, fd):
                self._fd, self._folder = fd, folder
                return True
            os.close(fd)
            folder.close()
            if taken is False:
                return False
            # Released and removed by its last holder since it was opened: lock the new file instead.

    def _lock(self, fd: int, blocking: bool) -> bool | None:
        """Lock the opened file and read its text: ``True`` locked, ``False`` another holds it,
        ``None`` it was removed by its holder meanwhile."""
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", self.path)
        if found.st_nlink > 1:
            raise OSError(errno.EINVAL, "a file with other names (hard links): never written", self.path)
        if found.st_nlink == 0:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self.text = self._read(fd)
            return False
        self.text = self._read(fd)
        return True

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            text = os.pread(fd, _MAX_TEXT + 1, 0)
        except OSError:
            return b""
        return text if len(text) <= _MAX_TEXT else b""

    def _current(self, folder: Folder, fd: int) -> bool:
        """Whether the locked file is still the one under the lock's name."""
        try:
            named = os.stat(folder.at(self._name), dir_fd=folder.fd, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def write(self, text: bytes) -> None:
        """Replace the held lock file's text, through the locked descriptor: whatever the name
        means by now, only the file locked is written."""
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} is not held")
        os.pwrite(self._fd, text, 0)
        os.ftruncate(self._fd, len(text))
        self.text = text

    def release(self, remove_up_to: str | None = None) -> None:
        """Let go. With ``remove_up_to`` (a folder containing the lock file, ``/``-separated
        below the root), delete the lock file first, while still holding it so no other process
        can be holding the file that disappears, then the folders it leaves empty up to and
        including that one."""
        fd, self._fd = self._fd, None
        folder, self._folder = self._folder, None
        if fd is None or folder is None:
            return
        try:
            if remove_up_to is not None and self._current(folder, fd):  # only its own file
                try:
                    os.unlink(folder.at(self._name), dir_fd=folder.fd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
            folder.close()
        if remove_up_to is None:
            return
        top = len(remove_up_to.split("/"))
        for depth in range(len(self._folders), top - 1, -1):
            try:  # fails, and stops here, if another lock file lives in it
                with open_folder(self.root, self._folders[:depth - 1]) as parent:
                    os.rmdir(parent.at(self._folders[depth - 1]), dir_fd=parent.fd)
            except OSError:
                return

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
