"""Values that belong to one process: connections and locks must never cross a ``fork``.

A forked child inherits its parent's sockets. If both go on using one kept-alive connection,
their requests interleave on it and each may read the other's response: an intact entry, for
the wrong key. So every client and lock that a cache keeps is held in a :class:`PerProcess`,
which makes its value anew the first time it is used in a new process. The check is the
process id, not ``os.register_at_fork``, so it also holds for forks made outside Python
(a C library calling ``fork()``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A lazily made value, made again in each process that uses it.

    The parent's value is left untouched in the child (not closed: closing a socket the
    parent still uses could end the parent's connection). Two threads of a child that reach
    :meth:`get` at once may both make a value; one is kept, the other dropped, which is
    harmless for the clients and locks this holds.
    """

    def __init__(self, factory: Callable[[], T], current: T | None = None) -> None:
        """``current``: a value already made in this process (made again in others)."""
        self._factory = factory
        self._state: tuple[T, int] | None = None if current is None else (current, os.getpid())

    def get(self) -> T:
        state = self._state
        pid = os.getpid()
        if state is None or state[1] != pid:
            state = (self._factory(), pid)
            self._state = state
        return state[0]

    def mine(self) -> T | None:
        """The value if this process made one, else ``None`` (for closing without creating)."""
        state = self._state
        return state[0] if state is not None and state[1] == os.getpid() else None
