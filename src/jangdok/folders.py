"""Folders below a cache root, reached without following symbolic links.

Anyone who can write a cache folder can put a symbolic link where one of its folders goes
(``chapters -> ~/project/chapters``), or swap one in between a check and a use. Followed, it
would make the cache read, write and delete files outside its root, as whoever runs it. So below
the root no folder is reached by its name: each is opened relative to its parent's descriptor,
refusing a link (``O_NOFOLLOW``) and anything but a folder (``O_DIRECTORY``, which also keeps
a FIFO from blocking the open), and the files in it are then opened, renamed and removed
relative to that descriptor (``dir_fd``), so a name swapped afterwards redirects nothing.

The root itself is the user's choice and may well be a link (``CACHE_DIR`` on another disk): it
is reached by its name, links and all. What lies below it is judged.

Where the system has no descriptor-relative calls (Windows), each folder is checked with
``lstat`` and then used by its name: a link or junction found there is refused just the same,
but one swapped in between the check and the use is followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence

__all__ = ["Folder", "open_folder", "DESCRIPTORS"]

DESCRIPTORS = hasattr(os, "O_DIRECTORY") and hasattr(os, "O_NOFOLLOW") and {
    os.open, os.stat, os.unlink, os.rename, os.mkdir, os.rmdir, os.utime, os.link} <= os.supports_dir_fd
"""Whether folders are held by descriptors (POSIX), or checked and then used by name (Windows)."""

_FOLDER_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
# Folders a walk makes anew, or that vanish under it (a lock's holder removes its empty folders
# on release), make it start again; an adversary who keeps removing them gets an error, not a hang.
_ATTEMPTS = 100
_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)


def _is_link(result: os.stat_result) -> bool:
    """A symbolic link, or on Windows any reparse point (a junction is a link by another name)."""
    return stat.S_ISLNK(result.st_mode) or bool(getattr(result, "st_file_attributes", 0) & _REPARSE_POINT)


def _link_error(path: str) -> OSError:
    return OSError(errno.ELOOP, "a symbolic link where a folder goes (never followed below the cache root)", path)


class Folder:
    """One folder at or below a cache root: ``path`` names it in messages, and files in it are
    reached as ``os.<call>(folder.at(name), ..., dir_fd=folder.fd)``.

    ``fd`` is ``None`` where the folder is used by its name: the root itself (it may be a link
    by choice, so nothing is gained by opening it), and every folder where the system has no
    descriptor-relative calls. ``created``: this walk made the folder or one above it."""

    __slots__ = ("path", "fd", "created", "_inside")

    def __init__(self, path: str, fd: int | None, created: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.created = created
        self._inside = "" if fd is not None else os.path.join(path, "")  # a write's path takes 4 of these

    def at(self, name: str) -> str:
        """How ``name`` in this folder is passed to a call that also gets ``dir_fd=self.fd``."""
        return self._inside + name

    def child(self, name: str, create: bool = False) -> Folder:
        """The folder ``name`` in this one, never through a link; made first if missing and
        ``create``. Raises ``FileNotFoundError`` if missing (or, while creating, if this folder
        itself is gone), ``NotADirectoryError`` for a file there and ``ELOOP`` for a link."""
        path = os.path.join(self.path, name)
        created = self.created
        while True:
            try:
                return Folder(path, self._open_child(name, path), created)
            except FileNotFoundError as exc:
                if not create:
                    raise FileNotFoundError(exc.errno, exc.strerror, path) from None
            except NotADirectoryError:
                raise self._not_a_folder(name, path) from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW says on some systems
                    raise _link_error(path) from None
                raise
            try:
                os.mkdir(self.at(name), 0o777, dir_fd=self.fd)
            except FileExistsError:  # made meanwhile by another process, or a dangling link: look again
                continue
            created = True

    def _open_child(self, name: str, path: str) -> int | None:
        if DESCRIPTORS:
            return os.open(self.at(name), _FOLDER_FLAGS, dir_fd=self.fd)
        found = os.lstat(path)
        if _is_link(found):
            raise _link_error(path)
        if not stat.S_ISDIR(found.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return None

    def _not_a_folder(self, name: str, path: str) -> OSError:
        """Say which name is in the way: a link here, a file here, or this folder is no folder
        (only the root can be, being reached by its name)."""
        try:
            found = os.stat(self.at(name), dir_fd=self.fd, follow_symlinks=False)
        except NotADirectoryError:
            return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.path)
        except OSError:
            found = None
        if found is not None and _is_link(found):
            return _link_error(path)
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)

    def entries(self) -> Iterator[tuple[str, bool]]:
        """Each name in the folder, and whether it is a folder itself (a link is not)."""
        with os.scandir(self.fd if self.fd is not None else self.path) as found:
            for entry in found:
                try:
                    folder = entry.is_dir(follow_symlinks=False)
                except OSError:  # removed meanwhile
                    continue
                yield entry.name, folder

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_folder(root: str, parts: Sequence[str], create: bool = False) -> Folder:
    """The folder ``root/parts[0]/.../parts[-1]``, each part reached without following a link
    (see :class:`Folder.child` for what is raised); with ``create``, the missing ones, the root
    included, are made. The caller closes it."""
    attempt = 0
    while True:
        made = False
        if create and (attempt or not parts) and not os.path.isdir(root):
            os.makedirs(root, exist_ok=True)
            made = True
        folder = Folder(root, None, made)
        try:
            for name in parts:
                inner = folder.child(name, create)
                folder.close()
                folder = inner
            return folder
        except FileNotFoundError:
            folder.close()
            attempt += 1
            if not create or attempt == _ATTEMPTS:
                raise
        except BaseException:
            folder.close()
            raise
