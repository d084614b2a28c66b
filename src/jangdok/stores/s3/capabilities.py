"""S3's capabilities: the fixed ones plain, the server's handling of conditional requests
probed the first time an operation needs it.

A definite answer (the server honours a condition, or really ignores it) is a fact about the
server: it is remembered per endpoint and bucket for the life of the process, so every store
on that bucket, and every fork, uses it without asking again. A probe that could not run (an
outage, read-only credentials) gives *unknown* (``None``), never ``False``: it is remembered
only by the store that met it, and only to wait :data:`RETRY_SECONDS` before the next access
probes again. One probe at a time per endpoint, bucket and capability runs in a process;
threads that need its answer meanwhile wait for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from ...perprocess import PerProcess
from ..base import Capabilities

__all__ = ["ProbedCapabilities", "RETRY_SECONDS"]

RETRY_SECONDS = 30.0
"""How long an unknown answer stands before the next access probes again."""
_clock = time.monotonic  # the tests advance time through this name

_answers: dict[tuple[str, str, str], bool] = {}
"""(endpoint, bucket, capability) -> the server's definite answer."""
# Made anew in a forked child: a thread of the parent may hold one of them mid-probe.
_locks: PerProcess[dict[tuple[str, str, str], threading.Lock]] = PerProcess(dict)


class ProbedCapabilities(Capabilities):
    """Capabilities of one S3 bucket. ``probes`` maps each probed capability to a function
    that asks the server: ``True`` honoured, ``False`` ignored, ``None`` could not tell."""

    def __init__(self, endpoint: str, bucket: str, probes: Mapping[str, Callable[[], bool | None]]) -> None:
        super().__init__(shared=True, range_reads=True)
        self._scope = (endpoint, bucket)
        self._probes = dict(probes)
        self._unknown_at: dict[str, float] = {}

    @property
    def conditional_write(self) -> bool | None:
        return self.answer("conditional_write")

    @property
    def conditional_delete(self) -> bool | None:
        return self.answer("conditional_delete")

    @property
    def conditional_batch_delete(self) -> bool | None:
        """Whether DeleteObjects deletes a key only if it still has the ETag given with it
        (S3 only: prune's batch deletes rely on it, else they delete one key at a time)."""
        return self.answer("conditional_batch_delete")

    def known(self, name: str) -> bool | None:
        """The answer if this process has one, without probing."""
        return _answers.get((*self._scope, name))

    def answer(self, name: str) -> bool | None:
        """The server's answer for capability ``name``, probing if none is known yet."""
        key = (*self._scope, name)
        found = _answers.get(key)
        if found is not None:
            return found
        # setdefault on a dict is atomic under the GIL: racing threads get the same lock.
        with _locks.get().setdefault(key, threading.Lock()):
            found = _answers.get(key)
            if found is not None:
                return found
            unknown_at = self._unknown_at.get(name)
            if unknown_at is not None and _clock() - unknown_at < RETRY_SECONDS:
                return None
            verdict = self._probes[name]()
            if verdict is None:
                self._unknown_at[name] = _clock()
            else:
                _answers[key] = verdict
                self._unknown_at.pop(name, None)
            return verdict

    def __repr__(self) -> str:
        probed = ", ".join(f"{name}={self.known(name)}" for name in self._probes)
        return f"ProbedCapabilities({self._scope[0]} {self._scope[1]}: shared=True, range_reads=True, {probed})"
