"""When and how long the client waits before repeating a request: exponential back-off with jitter.

Only failures that another try can fix are retried: connection errors and timeouts, ``408``, ``429`` and the
``5xx`` statuses. Every niks3d call is safe to repeat (docs/api.md), and so is a presigned ``PUT`` of the same
bytes. A ``Retry-After`` header (seconds or an HTTP date) replaces the computed delay, capped so that a
misbehaving server cannot park the client for hours.
"""

from __future__ import annotations

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "is_retryable_status", "parse_retry_after"]

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another try (throttling and server-side failures)."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries and how long between them.

    The delay before try ``n + 1`` (``attempt = n``, counting from 0) is drawn uniformly from
    ``[d/2, d]`` with ``d = min(cap, base * 2**attempt)`` ("equal jitter": never shorter than half the
    exponential step, so a herd of clients spreads out without retrying at once). A server's
    ``Retry-After`` wins, capped at ``max_retry_after``, plus up to 10 % jitter.
    """

    attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to sleep after the failed try number ``attempt`` (0 for the first try)."""
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), self.max_retry_after)
            return wait + rand() * min(1.0, 0.1 * wait)
        step = min(self.cap, self.base * 2.0 ** min(attempt, 32))
        return step / 2 + rand() * step / 2

    def should_retry(self, attempt: int) -> bool:
        """Whether another try follows the failed try number ``attempt`` (0 for the first)."""
        return attempt + 1 < self.attempts

    def schedule(self, rand: Callable[[], float] = random.random) -> list[float]:
        """The delays between all tries when none of them carries a ``Retry-After`` (for logs and tests)."""
        return [self.delay(n, None, rand) for n in range(self.attempts - 1)]
