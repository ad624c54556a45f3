"""The ``maintenance_runs`` record of ``niks3d import`` and ``niks3d fsck`` (migration 0005, docs/operations.md).

A run inserts its row (``running``) once it holds the collector's lock and sets its end state when it stops:
``finished``, ``failed`` (an error) or ``interrupted`` (SIGTERM). A process that died keeps its row
``running``; the next import or check, holding the lock, marks such rows ``interrupted``. The newest import row
is what GC looks at: anything but ``finished`` means objects in the bucket may belong to paths not registered
yet, and GC refuses to run.
"""

from __future__ import annotations

__all__ = [
    "MaintenanceRun",
    "MaintenanceSummary",
    "finish_run",
    "interrupt_abandoned",
    "last_run",
    "start_run",
    "summaries",
    "unfinished_import",
]

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Connection

from niks3d.db.gc.runs import GC_LOCK_KEY

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


@dataclass(frozen=True, slots=True)
class MaintenanceSummary:
    """What ``/metrics`` says about one command (docs/proxy.md): its newest run, and its newest finished one."""

    command: str
    state: str  # of the newest run
    started_at: datetime  # of the newest run
    running: bool  # the newest run says running and the collector's lock is held (its process is alive)
    finished_at: datetime | None = None  # the end of the newest finished run
    counts: dict[str, int] | None = None  # of the newest finished run
    problems: int | None = None  # left by the newest finished run


async def summaries(conn: Connection) -> dict[str, MaintenanceSummary]:
    """The newest run and the newest finished run of each command that ran, by command.

    A run whose process was killed keeps saying ``running`` until the next import or check; it is reported as
    running only while someone holds the collector's advisory lock (a bigint key shows in ``pg_locks`` as its
    high half in ``classid``, its low half in ``objid``, and ``objsubid = 1``)."""
    newest = await conn.fetch(
        """SELECT DISTINCT ON (command) command, state, started_at
           FROM maintenance_runs ORDER BY command, id DESC"""
    )
    if not newest:
        return {}
    finished = {
        r["command"]: r
        for r in await conn.fetch(
            """SELECT DISTINCT ON (command) command, finished_at, counts, problems
               FROM maintenance_runs WHERE state = 'finished' ORDER BY command, id DESC"""
        )
    }
    locked = await conn.fetchval(
        """SELECT EXISTS (
               SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid)""",
        GC_LOCK_KEY,
    )
    out = {}
    for row in newest:
        done = finished.get(row["command"])
        out[row["command"]] = MaintenanceSummary(
            command=row["command"],
            state=row["state"],
            started_at=row["started_at"],
            running=row["state"] == "running" and bool(locked),
            finished_at=done["finished_at"] if done else None,
            counts=dict(done["counts"]) if done else None,
            problems=done["problems"] if done else None,
        )
    return out
