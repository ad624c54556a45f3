"""Live figures about the cache (paths, bytes, sessions, garbage collection), read from PostgreSQL.

The landing page and ``/metrics`` show them. The queries scan ``objects`` and the smaller tables, so their result
is kept for :data:`MAX_AGE` seconds: however often either page is asked for, the database does the work at most
once per period, one refresh at a time. When the database does not answer, the last figures are shown (with
the time they were taken), or none.
"""

from __future__ import annotations

__all__ = ["CacheFigures", "FiguresReader", "GcRunSummary"]

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

logger = logging.getLogger(__name__)

MAX_AGE = 30.0
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class GcRunSummary:
    """The latest garbage-collection run."""

    id: int
    state: str
    started_at: datetime
    finished_at: datetime | None
    bytes_freed: int
    dry_run: bool


@dataclass(frozen=True)
class CacheFigures:
    """One reading of the database."""

    taken_at: datetime
    paths: int
    # (kind, state) -> (objects, bytes)
    objects: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    gc_runs: dict[str, int] = field(default_factory=dict)
    last_gc: GcRunSummary | None = None

    @property
    def stored_bytes(self) -> int:
        """Bytes of every object in the bucket that niks3d has checked (state ``present``)."""
        return sum(size for (_, state), (_, size) in self.objects.items() if state == "present")

    def bytes_of(self, kind: str) -> int:
        return self.objects.get((kind, "present"), (0, 0))[1]


async def read_figures(conn: asyncpg.Connection) -> CacheFigures:
    """Read every figure on ``conn`` in one read-only transaction (one consistent snapshot)."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        paths = await conn.fetchval("SELECT count(*) FROM store_paths")
        objects = await conn.fetch(
            "SELECT kind, state, count(*) AS n, coalesce(sum(size), 0) AS bytes FROM objects GROUP BY kind, state"
        )
        sessions = await conn.fetch("SELECT state, count(*) AS n FROM upload_sessions GROUP BY state")
        runs = await conn.fetch("SELECT state, count(*) AS n FROM gc_runs GROUP BY state")
        last = await conn.fetchrow(
            """SELECT id, state, started_at, finished_at, bytes_freed, dry_run
               FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT 1"""
        )
    return CacheFigures(
        taken_at=datetime.now(UTC),
        paths=int(paths),
        objects={(r["kind"], r["state"]): (int(r["n"]), int(r["bytes"])) for r in objects},
        sessions={r["state"]: int(r["n"]) for r in sessions},
        gc_runs={r["state"]: int(r["n"]) for r in runs},
        last_gc=GcRunSummary(**dict(last)) if last is not None else None,
    )


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
