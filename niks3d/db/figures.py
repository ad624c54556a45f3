"""The live figures about the cache (paths, bytes, sessions, garbage collection, imports and checks) in one read.

:class:`niks3d.server.figures.FiguresReader` keeps the latest reading for the landing page and ``/metrics``.
"""

from __future__ import annotations

__all__ = ["CacheFigures", "GcRunSummary", "read_figures"]

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from niks3d.db.maintenance import MaintenanceSummary, summaries


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
    # command ("import", "fsck") -> its newest run and newest finished run; absent until it first ran
    maintenance: dict[str, MaintenanceSummary] = field(default_factory=dict)

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
        maintenance = await summaries(conn)
    return CacheFigures(
        taken_at=datetime.now(UTC),
        paths=int(paths),
        objects={(r["kind"], r["state"]): (int(r["n"]), int(r["bytes"])) for r in objects},
        sessions={r["state"]: int(r["n"]) for r in sessions},
        gc_runs={r["state"]: int(r["n"]) for r in runs},
        last_gc=GcRunSummary(**dict(last)) if last is not None else None,
        maintenance=maintenance,
    )
