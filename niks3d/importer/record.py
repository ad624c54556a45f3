"""The ``maintenance_runs`` row of one import or check, kept while the collector's lock is held.

The row says ``running`` from the start; it ends ``finished`` (with the report's counts and the number of
problems), ``failed`` (an error, named) or ``interrupted`` (SIGTERM). SIGKILL leaves it ``running``, which the next
import or check marks ``interrupted``. GC refuses to run while the newest import is not ``finished``
(``niks3d.gc.collector.claim_run``; docs/operations.md, "After an interrupted import").
"""

from __future__ import annotations

__all__ = ["recorded"]

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncpg import Connection

from niks3d.db import maintenance as db
from niks3d.gc.runs import run_owner
from niks3d.importer.problems import Report

logger = logging.getLogger(__name__)
_ERROR_CHARS = 500


@asynccontextmanager
async def recorded(conn: Connection, report: Report) -> AsyncIterator[db.MaintenanceRun]:
    """Record the run of ``report.command`` on ``conn``, which holds the collector's lock."""
    for run_id in await db.interrupt_abandoned(conn):
        logger.warning("maintenance run %d was left running by a process that stopped; marked interrupted", run_id)
    run = await db.start_run(conn, report.command, run_owner())
    state, error = "finished", None
    try:
        yield run
    except asyncio.CancelledError:
        state, error = "interrupted", "stopped (SIGTERM) before the end"
        raise
    except Exception as exc:
        state, error = "failed", f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        raise
    finally:
        try:
            await db.finish_run(
                conn, run.id, state=state, counts=dict(report.counts), problems=len(report.problems), error=error
            )
        except Exception as exc:  # the connection is gone: the row stays running, and GC keeps refusing
            logger.warning("could not record the end of %s run %d: %s", report.command, run.id, exc)
