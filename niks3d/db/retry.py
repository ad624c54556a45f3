"""Re-running a transaction that lost a race: deadlocks, serialization failures, and constraint races.

Sessions and GC lock the same ``objects`` rows. When a session's claim races a GC sweep, PostgreSQL answers with
a foreign-key or unique violation (the row it wanted went away, or another session claimed the upload first);
running the whole transaction again sees the new state and decides afresh.
"""

from __future__ import annotations

__all__ = ["Conflict", "retry_transaction"]

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from niks3d.errors import DatabaseError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Conflict(Exception):
    """Raised inside an attempt that saw a concurrent change (a row it just ensured was deleted by GC)."""


_RETRYABLE: tuple[type[BaseException], ...] = (
    Conflict,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ForeignKeyViolationError,
    asyncpg.exceptions.UniqueViolationError,
)


async def retry_transaction(attempt: Callable[[], Awaitable[T]], *, attempts: int = 8) -> T:
    """Run ``attempt`` (which opens its own transaction) until it does not lose a race."""
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except _RETRYABLE as exc:
            if number == attempts:
                raise DatabaseError(f"transaction kept conflicting after {attempts} attempts: {exc}") from exc
            logger.debug("transaction conflict (%s), attempt %d of %d", type(exc).__name__, number, attempts)
            await asyncio.sleep(random.uniform(0.005, 0.02) * number)  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")
