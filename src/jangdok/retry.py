"""Bounded retries with exponential backoff and full jitter.

Bounded twice: by a number of attempts, and by a deadline that no new attempt may overrun
(an attempt only starts if its worst case, connect plus read timeout, still fits). So a stalled
server fails within ``total_timeout`` seconds, however the other numbers are set.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["RetryPolicy", "RetryBudget", "RetryExhausted"]

log = logging.getLogger("jangdok")
T = TypeVar("T")


class RetryExhausted(Exception):
    """Raised from the last transient error when no attempt is left; carries the tally."""

    def __init__(self, last: BaseException, attempts: int, elapsed: float) -> None:
        super().__init__(f"{last} (after {attempts} attempt(s) in {elapsed:.1f} s)")
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    total_timeout: float = 60.0
    attempt_timeout: float = 20.0
    """Worst-case duration of one attempt (connect + read timeout)."""
    base_delay: float = 0.2
    max_delay: float = 5.0
    # Time and chance, given explicitly so the bounds can be proven with a simulated clock.
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False, repr=False)

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**retry)], so clients spread out."""
        return self.uniform(0, min(self.max_delay, self.base_delay * 2**retry))

    def budget(self) -> RetryBudget:
        return RetryBudget(self)

    def call(self, operation: Callable[[], T], is_transient: Callable[[BaseException], bool], what: str) -> T:
        """Run ``operation`` once with a fresh budget; see :meth:`RetryBudget.call`."""
        return self.budget().call(operation, is_transient, what)


class RetryBudget:
    """The attempts and time left to one operation, or to one transfer across many reads.

    A transfer calls :meth:`progressed` whenever bytes arrive: the policy bounds how long it may
    go *without* progress, so a stalled download fails in bounded time while a slow but moving
    one is never cut off for being large.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempts = 0
        self.started: float | None = None

    def progressed(self) -> None:
        self.attempts = 0
        self.started = None

    def call(self, operation: Callable[[], T], is_transient: Callable[[BaseException], bool], what: str) -> T:
        """Run ``operation``, retrying transient failures; other errors propagate at once.

        When the attempts or the time run out, raises :class:`RetryExhausted` from the last error.
        """
        policy = self.policy
        while True:
            if self.started is None:
                self.started = policy.clock()
            self.attempts += 1
            try:
                return operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                elapsed = policy.clock() - self.started
                pause = policy.delay(self.attempts - 1)
                fits = elapsed + pause + policy.attempt_timeout <= policy.total_timeout
                if self.attempts >= policy.max_attempts or not fits:
                    raise RetryExhausted(exc, self.attempts, elapsed) from exc
                log.debug("retrying %s in %.2f s after attempt %d failed: %s", what, pause, self.attempts, exc)
                policy.sleep(pause)
