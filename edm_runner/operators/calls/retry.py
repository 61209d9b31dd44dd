"""Which answers count as success, which are retried, and how long to wait before the next try.

Invariants: a status is exactly one of success, retry, fail (``RetryPolicy.classify``); timeouts
and connection errors are retried; the wait before try n+1 is never shorter than the server's
``Retry-After`` and never longer than ``max_delay`` (unless Retry-After asks for more).
"""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["success", "retry", "fail"]

DEFAULT_SUCCESS = ("2xx",)
DEFAULT_RETRY = (408, 425, 429, 500, 502, 503, 504)


def status_matches(status: int, patterns: tuple[int | str, ...]) -> bool:
    """``patterns``: status codes (404) or classes ("2xx", "5xx")."""
    for p in patterns:
        if isinstance(p, int) and p == status:
            return True
        if isinstance(p, str) and len(p) == 3 and p[1:] == "xx" and str(status)[0] == p[0]:
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts``: tries in all (1: no retry). Delay before try n+1 (n >= 1): ``start *
    multiplier**(n-1)`` capped at ``max_delay``, where ``start`` is the server's Retry-After when
    it sent one and ``initial`` otherwise, plus a random jitter of up to ``jitter`` times it
    (so a crowd of retries spreads out instead of coming back together)."""

    attempts: int = 5
    initial: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    success: tuple[int | str, ...] = DEFAULT_SUCCESS
    retry: tuple[int | str, ...] = DEFAULT_RETRY
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def classify(self, status: int) -> Outcome:
        if status_matches(status, self.success):
            return "success"
        if status_matches(status, self.retry):
            return "retry"
        return "fail"

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        start = retry_after if retry_after is not None else self.initial
        base = min(start * self.multiplier ** (attempt - 1), max(self.max_delay, retry_after or 0.0))
        return base + self.rng.uniform(0, base * self.jitter)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds ("120") or an HTTP date; None when
    absent or unreadable (then the policy's own backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
