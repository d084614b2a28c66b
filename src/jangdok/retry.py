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
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryPolicy", "RetryExhausted"]

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

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**retry)], so clients spread out."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retry))

    def call(self, operation: Callable[[], T], is_transient: Callable[[BaseException], bool], what: str) -> T:
        """Run ``operation``, retrying transient failures; other errors propagate at once.

        When the attempts or the time run out, raises :class:`RetryExhausted` from the last error.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                elapsed = time.monotonic() - started
                pause = self.delay(attempt - 1)
                fits = elapsed + pause + self.attempt_timeout <= self.total_timeout
                if attempt >= self.max_attempts or not fits:
                    raise RetryExhausted(exc, attempt, elapsed) from exc
                log.debug("retrying %s in %.2f s after attempt %d failed: %s", what, pause, attempt, exc)
                time.sleep(pause)
