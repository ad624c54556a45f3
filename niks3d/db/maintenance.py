"""The ``maintenance_runs`` record of ``niks3d import`` and ``niks3d fsck`` (migration 0005, docs/operations.md).

A run inserts its row (``running``) once it holds the collector's lock and sets its end state when it stops:
``finished``, ``failed`` (an error) or ``interrupted`` (SIGTERM). A process that died keeps its row
``running``; the next import or check, holding the lock, marks such rows ``interrupted``. The newest import row
is what GC looks at: anything but ``finished`` means objects in the bucket may belong to paths not registered
yet, and GC refuses to run.
"""

from __future__ import annotations

__all__ = ["MaintenanceRun", "finish_run", "interrupt_abandoned", "last_run", "start_run", "unfinished_import"]

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Connection

_COLUMNS = "id, command, state, owner, started_at, finished_at, counts, problems, error"


@dataclass(frozen=True, slots=True)
class MaintenanceRun:
    """One row of ``maintenance_runs``."""

    id: int
    command: str
    state: str
    owner: str
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    problems: int | None
    error: str | None


def _row(record: Any) -> MaintenanceRun:
    return MaintenanceRun(**dict(record))


async def interrupt_abandoned(conn: Connection) -> list[int]:
    """Mark ``running`` rows ``interrupted``; call only while holding the collector's lock (their owners are gone)."""
    records = await conn.fetch(
        """UPDATE maintenance_runs SET state = 'interrupted', finished_at = now(),
                  error = coalesce(error, 'the process running it stopped')
           WHERE state = 'running' RETURNING id"""
    )
    return [r["id"] for r in records]


async def start_run(conn: Connection, command: str, owner: str) -> MaintenanceRun:
    record = await conn.fetchrow(
        f"INSERT INTO maintenance_runs (command, owner) VALUES ($1, $2) RETURNING {_COLUMNS}",  # noqa: S608
        command,
        owner,
    )
    return _row(record)


async def finish_run(
    conn: Connection, run_id: int, *, state: str, counts: dict[str, int], problems: int | None, error: str | None
) -> None:
    await conn.execute(
        """UPDATE maintenance_runs SET state = $2, counts = $3, problems = $4, error = $5, finished_at = now()
           WHERE id = $1""",
        run_id,
        state,
        counts,
        problems,
        error,
    )


async def last_run(conn: Connection, command: str) -> MaintenanceRun | None:
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM maintenance_runs WHERE command = $1 ORDER BY id DESC LIMIT 1",  # noqa: S608
        command,
    )
    return _row(record) if record else None


async def unfinished_import(conn: Connection) -> MaintenanceRun | None:
    """The newest import if it did not finish (it is running, or it died, failed or was stopped), else None."""
    run = await last_run(conn, "import")
    return run if run is not None and run.state != "finished" else None
