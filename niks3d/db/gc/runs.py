"""The ``gc_runs`` rows and the collector's lock.

One run at a time, across every process that shares the database: a run holds the session-level advisory lock
:data:`GC_LOCK_KEY` on one connection for as long as it works (:mod:`niks3d.gc.runs` says who takes it). The lock
goes away with the connection, so a run whose process died leaves a ``running`` row behind and no lock; the next
run to take the lock marks such rows ``interrupted`` (:func:`interrupt_abandoned`).
"""

from __future__ import annotations

__all__ = [
    "GC_LOCK_KEY",
    "RunRow",
    "finish_run",
    "get_run",
    "insert_run",
    "interrupt_abandoned",
    "list_runs",
    "running_run",
    "try_lock",
    "unlock",
    "update_run",
]

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Connection

# "niks3dgc" in ASCII; docs/database.md lists every advisory lock key of niks3d.
GC_LOCK_KEY = 0x6E696B7333646763


@dataclass(frozen=True, slots=True)
class RunRow:
    """One row of ``gc_runs``."""

    id: int
    state: str
    phase: str
    params: dict[str, Any]
    counts: dict[str, int]
    bytes_freed: int
    dry_run: bool
    forced: bool
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime
    owner: str

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "state": self.state,
            "phase": self.phase,
            "params": self.params,
            "counts": self.counts,
            "bytes_freed": self.bytes_freed,
            "dry_run": self.dry_run,
            "forced": self.forced,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "owner": self.owner,
        }


_COLUMNS = (
    "id, state, phase, params, counts, bytes_freed, dry_run, forced, error, "
    "started_at, finished_at, heartbeat_at, owner"
)


def _row(record: Any) -> RunRow:
    return RunRow(**dict(record))


async def try_lock(conn: Connection) -> bool:
    """Take the collector's session-level advisory lock on ``conn`` if nobody holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY))


async def unlock(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)


async def running_run(conn: Connection) -> RunRow | None:
    """The newest row still marked ``running`` (the active run, or one whose owner died)."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM gc_runs WHERE state = 'running' ORDER BY id DESC LIMIT 1"  # noqa: S608
    )
    return _row(record) if record else None


async def interrupt_abandoned(conn: Connection) -> list[int]:
    """Mark ``running`` rows ``interrupted``; call only while holding the lock (so their owners are gone)."""
    records = await conn.fetch(
        """UPDATE gc_runs SET state = 'interrupted', finished_at = now(),
                  error = coalesce(error, 'the process running it stopped (last heartbeat '
                                          || to_char(heartbeat_at, 'YYYY-MM-DD"T"HH24:MI:SSOF') || ')')
           WHERE state = 'running' RETURNING id"""
    )
    return [r["id"] for r in records]


async def insert_run(conn: Connection, params: dict[str, Any], *, dry_run: bool, forced: bool, owner: str) -> RunRow:
    """Record a new run (``params``: its parameters as JSON) as running, in its ``starting`` phase."""
    record = await conn.fetchrow(
        f"""INSERT INTO gc_runs (state, phase, params, dry_run, forced, owner)
            VALUES ('running', 'starting', $1, $2, $3, $4) RETURNING {_COLUMNS}""",  # noqa: S608
        params,
        dry_run,
        forced,
        owner,
    )
    return _row(record)


async def update_run(conn: Connection, run_id: int, phase: str, counts: dict[str, int], bytes_freed: int) -> None:
    """Record progress and the heartbeat of a running run."""
    await conn.execute(
        """UPDATE gc_runs SET phase = $2, counts = $3, bytes_freed = $4, heartbeat_at = now()
           WHERE id = $1 AND state = 'running'""",
        run_id,
        phase,
        counts,
        bytes_freed,
    )


async def finish_run(
    conn: Connection,
    run_id: int,
    *,
    state: str,
    counts: dict[str, int],
    bytes_freed: int,
    error: str | None = None,
) -> RunRow:
    record = await conn.fetchrow(
        f"""UPDATE gc_runs SET state = $2, phase = 'done', counts = $3, bytes_freed = $4, error = $5,
                   finished_at = now(), heartbeat_at = now()
            WHERE id = $1 RETURNING {_COLUMNS}""",  # noqa: S608
        run_id,
        state,
        counts,
        bytes_freed,
        error,
    )
    return _row(record)


async def get_run(conn: Connection, run_id: int) -> RunRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM gc_runs WHERE id = $1", run_id)  # noqa: S608
    return _row(record) if record else None


async def list_runs(conn: Connection, limit: int = 20) -> list[RunRow]:
    """The latest runs, newest first."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT $1",  # noqa: S608
        limit,
    )
    return [_row(r) for r in records]
