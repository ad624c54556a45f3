"""Live figures about the cache (paths, bytes, sessions, garbage collection), read from PostgreSQL
(:mod:`niks3d.db.figures`).

The landing page and ``/metrics`` show them. The queries scan ``objects`` and the smaller tables, so their result
is kept for :data:`MAX_AGE` seconds: however often either page is asked for, the database does the work at most
once per period, one refresh at a time. When the database does not answer, the last figures are shown (with
the time they were taken), or none.
"""

from __future__ import annotations

__all__ = ["FiguresReader"]

import asyncio
import logging
import time

import asyncpg

from niks3d.db.figures import CacheFigures, read_figures

logger = logging.getLogger(__name__)

MAX_AGE = 30.0
TIMEOUT = 5.0


class FiguresReader:
    """The latest :class:`CacheFigures`, read again when older than ``max_age`` seconds."""

    def __init__(self, pool: asyncpg.Pool, *, max_age: float = MAX_AGE, timeout: float = TIMEOUT) -> None:
        self._pool = pool
        self._max_age = max_age
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._read_at = -float("inf")
        self.latest: CacheFigures | None = None

    async def get(self) -> CacheFigures | None:
        """Fresh enough figures, the last ones if the database fails, or None if there never were any."""
        if time.monotonic() - self._read_at < self._max_age:
            return self.latest
        async with self._lock:
            if time.monotonic() - self._read_at < self._max_age:
                return self.latest
            try:
                async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                    self.latest = await read_figures(conn)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                logger.warning("cannot read the cache figures from PostgreSQL: %s", exc or type(exc).__name__)
            # After a failure too: a database in trouble is asked again only after max_age.
            self._read_at = time.monotonic()
        return self.latest
