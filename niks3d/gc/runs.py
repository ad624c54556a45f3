"""Garbage-collection runs: their parameters, the refusal while one is running, and the collector's lock held
for a whole import or check. The ``gc_runs`` rows and the lock's statements are in :mod:`niks3d.db.gc.runs`;
``docs/gc.md`` describes the whole collector.
"""

from __future__ import annotations

__all__ = ["GcParams", "GcRunning", "collector_lock_held", "run_owner"]

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asyncpg import Connection

from niks3d.db.gc.runs import RunRow, try_lock, unlock
from niks3d.errors import StateConflict


class GcRunning(StateConflict):
    """Another garbage collection (a run, or a path deletion) holds the lock; ``run`` is its row if it is a run.

    Its code is ``gc_running``, and its details name the run (``run_id``, ``since``) when there is one."""

    def __init__(self, run: RunRow | None) -> None:
        self.run = run
        if run is None:
            message = "another garbage collection holds the lock (a path deletion or a run that is starting)"
        else:
            message = (
                f"garbage collection run {run.id} is already running since {run.started_at.isoformat()} "
                f"(phase {run.phase}, owner {run.owner})"
            )
        super().__init__(
            message,
            code="gc_running",
            run_id=run.id if run else None,
            since=run.started_at.isoformat() if run else None,
        )


@dataclass(frozen=True, slots=True)
class GcParams:
    """What one run does: retention of pushed roots, grace period, whether to skip it, whether to delete."""

    older_than: timedelta
    grace_period: timedelta
    force: bool = False
    dry_run: bool = False
    batch_size: int = 1000

    @property
    def grace(self) -> timedelta:
        """The grace period in effect: none when forced."""
        return timedelta(0) if self.force else self.grace_period

    def to_json(self) -> dict[str, Any]:
        return {
            "older_than": int(self.older_than.total_seconds()),
            "grace_period": int(self.grace_period.total_seconds()),
            "force": self.force,
            "dry_run": self.dry_run,
            "batch_size": self.batch_size,
        }


def run_owner() -> str:
    """``host:pid`` of this process, as recorded in ``gc_runs.owner``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@asynccontextmanager
async def collector_lock_held(conn: Connection) -> AsyncIterator[None]:
    """Hold the collector's lock on ``conn`` for a whole import or check (``niks3d import``, ``niks3d fsck``);
    raises StateConflict (code ``gc_running``) at once if a GC run, an import or a check holds it."""
    if not await try_lock(conn):
        raise StateConflict(
            "a garbage collection, import or check is running; try again when it has finished", code="gc_running"
        )
    try:
        yield
    finally:
        await unlock(conn)
