"""Writing a new file's bytes, and putting it in place: the system calls behind a local write.

``write_chunks`` hands the caller's buffers to the kernel as they are (``writev``, resuming
after short writes). ``exchange`` swaps two names in one atomic step (Linux's
``renameat2(RENAME_EXCHANGE)``), which the local store prefers to a replacing rename over an
existing entry: see :mod:`jangdok.stores.local` for why.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Iterator

from ..folders import Folder
from .base import Chunks, iter_chunks

__all__ = ["IOV_MAX", "write_chunks", "Exchange", "exchange"]


def _iov_max() -> int:
    try:
        limit = os.sysconf("SCIOV_MAX")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf; some systems no name
        return 1024
    return limit if limit > 0 else 1024


IOV_MAX = _iov_max()
_WRITEV = hasattr(os, "writev")
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's


_ONE_CALL = 1 << 20
"""Bytes handed to writev as they are, in one call: a small entry's header and stream."""

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
            if len(batch) == IOV_MAX or size == max_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _write_batch(fd: int, batch: list[memoryview], wrote: Callable[[int], None]) -> None:
    """Write non-empty views in order, resuming after partial writes; the caller's buffers go
    to the kernel as they are, never copied here."""
    if not _WRITEV:  # Windows
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


def _ignore(count: int) -> None:
    pass


def write_chunks(fd: int, data: Chunks, progress: Callable[[int], None] | None) -> None:
    """Write ``data`` to ``fd`` without copying it: chunks at hand in as few ``writev`` calls as
    IOV_MAX allows, a generator's one by one; ``progress(total)`` after each system call."""
    if progress is None and isinstance(data, (list, tuple)) and len(data) <= IOV_MAX:  # a small entry's case
        if _WRITEV and {*map(type, data)} <= {bytes} and sum(map(len, data)) <= _ONE_CALL:
            written = os.writev(fd, data)  # one call, and no views to make
            if written == sum(map(len, data)):
                return
            data = [memoryview(b"".join(data))[written:]]  # short (a signal, a size limit): small, so copied
        _write_batch(fd, list(iter_chunks(data)), _ignore)
        return
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


class Exchange:
    """``renameat2(folder, a, folder, b, RENAME_EXCHANGE)`` through the C library: resolved on first
    use (no ctypes at import), switched off for the process when the C library or the kernel lacks
    it, and for one device when its file system does."""

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

    def __call__(self, folder: Folder, source: str, target: str, device: int) -> bool:
        """Swap two existing names in ``folder`` atomically. ``False`` if nothing was swapped:
        the target is gone, the call is unavailable, or it failed; the caller then uses
        ``os.replace``, which does the job or reports the failure exactly as before."""
        if device in self.unsupported_devices:
            return False
        function = self._resolve()
        if function is None:
            return False
        at = self.AT_FDCWD if folder.fd is None else folder.fd
        if function(at, folder.at(source).encode(_FS_ENCODING, _FS_ERRORS), at,
                    folder.at(target).encode(_FS_ENCODING, _FS_ERRORS), self.RENAME_EXCHANGE) == 0:
            return True
        code = self._get_errno()
        if code == errno.ENOSYS:  # the kernel (or a seccomp filter) lacks it: off for the process
            self._function = None
        elif code in (errno.EINVAL, errno.EOPNOTSUPP):  # this file system cannot exchange
            self.unsupported_devices.add(device)
        return False


exchange = Exchange()
