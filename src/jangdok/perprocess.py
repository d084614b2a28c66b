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
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")

# Reentrant: a factory may use another PerProcess. Made anew in a forked child, where another
# thread of the parent may have held it at the fork.
_guard = [threading.RLock()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _guard.__setitem__(0, threading.RLock()))


class PerProcess(Generic[T]):
    """A lazily made value, made again in each process that uses it.

    The parent's value is left untouched in the child (not closed: closing a socket the
    parent still uses could end the parent's connection). Values are made under one guard, so
    threads that reach :meth:`get` together share one value (for a lock, that is the point).
    """

    def __init__(self, factory: Callable[[], T], current: T | None = None) -> None:
        """``current``: a value already made in this process (made again in others)."""
        self._factory = factory
        self._state: tuple[T, int] | None = None if current is None else (current, os.getpid())

    def get(self) -> T:
        state = self._state
        pid = os.getpid()
        if state is None or state[1] != pid:
            with _guard[0]:
                state = self._state
                if state is None or state[1] != pid:
                    state = (self._factory(), pid)
                    self._state = state
        return state[0]

    def mine(self) -> T | None:
        """The value if this process made one, else ``None`` (for closing without creating)."""
        state = self._state
        return state[0] if state is not None and state[1] == os.getpid() else None
