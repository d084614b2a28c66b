"""An exclusive lock on a file, held through ``flock``: the OS releases it when its holder
dies, however it dies, so a crash can never leave a lock that nobody can take.

Each acquisition opens the file anew, so threads of one process exclude each other as
processes do. A holder that removes the file on release makes it disappear from the folder;
a process that opened it just before then locks a file nobody else can see, so ``acquire``
checks that the file it locked is still the one under the name, and tries again if not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

__all__ = ["FileLock"]

_NO_TTY = getattr(os, "O_NOCTTY", 0)


class FileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, ``False`` at once if another holder has it.
        Raises ``OSError`` if the folder cannot hold a lock file, or if something else than a
        regular file has its name (a FIFO planted there would block whoever reads it)."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | _NO_TTY, 0o644)
            except FileNotFoundError:  # no folder yet, or a releasing holder just removed it
                try:
                    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                except FileNotFoundError:  # a releasing holder removed a parent mid-way: again
                    pass
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", self.path)
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self._fd = fd
                return True
            os.close(fd)  # released and removed by its last holder: lock the new file instead

    def release(self, remove_up_to: str | None = None) -> None:
        """Let go. With ``remove_up_to`` (a folder containing the lock file), delete the lock
        file first, while still holding it so no other process can be holding the file that
        disappears, then the folders it leaves empty up to and including that one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if remove_up_to is not None:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
        if remove_up_to is None:
            return
        folder = os.path.dirname(self.path)
        top = os.path.normpath(remove_up_to)
        while folder.startswith(top):
            try:
                os.rmdir(folder)  # fails, and stops here, if another lock file lives in it
            except OSError:
                return
            folder = os.path.dirname(folder)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
