"""A store in a local folder. Writes are atomic: a unique temporary file, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
from collections.abc import Iterator
from stat import S_ISREG

from ..errors import AccessDenied, InvalidKey, StoreUnavailable
from ..location import TEMP_MARKER, Location, validate_key
from .base import Capabilities, Chunks, ObjectInfo, Reader, Store, iter_chunks

__all__ = ["LocalStore"]


def _object_info(key: str, result: os.stat_result) -> ObjectInfo:
    # A replaced file is a new inode (os.replace), so inode, time and size identify a version.
    version = f"{result.st_ino}-{result.st_mtime_ns}-{result.st_size}"
    return ObjectInfo(key, result.st_size, result.st_mtime, version)


class _FileReader(Reader):
    """A file limited to ``[start, stop)``, so local and S3 range reads behave the same."""

    def __init__(self, key: str, file: io.BufferedReader, start: int, stop: int | None) -> None:
        super().__init__()
        self._file = file
        self.info = _object_info(key, os.fstat(file.fileno()))
        end = self.info.size if stop is None else min(stop, self.info.size)
        self.size = max(0, end - start)
        self._remaining = self.size
        file.seek(start)

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[: self._remaining]
        count = self._file.readinto(view)
        self._remaining -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


class LocalStore(Store):
    """Objects are files under ``location.root``; keys map to paths one segment per folder."""

    name = "local"
    capabilities = Capabilities(shared=False, range_reads=True)

    def __init__(self, location: Location) -> None:
        if location.is_s3:
            raise ValueError(f"LocalStore needs a folder, got {location.url}")
        self.location = location

    def _os_error(self, exc: OSError, verb: str, path: str) -> Exception:
        if isinstance(exc, PermissionError):
            return AccessDenied(f"Local error {verb} {path}: permission denied; check the folder's owner and mode")
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidKey(f"Local error {verb} {path}: the name is too long for this file system")
        return StoreUnavailable(f"Local error {verb} {path}: {exc.strerror or exc}; check the disk and the folder")

    def read(self, key: str, start: int = 0, stop: int | None = None) -> Reader | None:
        path = self.location.local_path(key)
        try:
            file = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise self._os_error(exc, "loading", path) from exc
        return _FileReader(key, file, start, stop)

    def write(self, key: str, data: Chunks) -> None:
        path = self.location.local_path(key)
        folder = os.path.dirname(path)
        # Same folder as the target, so os.replace is a rename within one file system and
        # readers see either the old file or the new one. A random suffix keeps concurrent
        # writers of the same key out of each other's temporary files.
        temp = os.path.join(folder, f"{TEMP_MARKER}{secrets.token_hex(8)}")
        try:
            os.makedirs(folder or ".", exist_ok=True)
            with open(temp, "xb") as file:
                for chunk in iter_chunks(data):
                    file.write(chunk)
            os.replace(temp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # cleanup only: the original error matters
                os.unlink(temp)
            if isinstance(exc, OSError):
                raise self._os_error(exc, "saving", path) from exc
            raise

    def delete(self, key: str, version: str | None = None) -> bool:
        path = self.location.local_path(key)
        if version is not None:
            current = self.stat(key)
            if current is None or current.version != version:
                return False
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._os_error(exc, "deleting", path) from exc
        return True

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.location.local_path(key)
        try:
            result = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._os_error(exc, "checking", path) from exc
        if not S_ISREG(result.st_mode):
            return None
        return _object_info(key, result)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = self.location.root

        def unreadable(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):  # a missing root is an empty cache
                raise self._os_error(exc, "listing", exc.filename or root) from exc

        for folder, dirs, files in os.walk(root, onerror=unreadable):
            dirs.sort()
            relative = os.path.relpath(folder, root)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                dirs.clear()
                continue
            for name in sorted(files):
                key = base + name
                if not key.startswith(prefix):
                    continue
                try:
                    validate_key(key)  # temporary files and names S3 could not hold either
                    result = os.stat(os.path.join(folder, name))
                except (InvalidKey, FileNotFoundError):  # the latter: deleted while we listed
                    continue
                yield _object_info(key, result)
