"""One garbage-collection run from start to end: lock, expire, adopt orphans, mark, sweep, record.

``docs/gc.md`` explains the phases and why the order is safe. In short:

1. ``sessions``: expire stale upload sessions (aborting their multipart uploads), forget old closed ones, drop
   pushed roots older than ``older_than``.
2. ``orphans``: adopt untracked objects of the bucket older than the grace period; abort abandoned multipart
   uploads.
3. ``mark``: roots (young pushed roots, pins, paths whose narinfo an open session claims, paths published within
   the grace period) and their closure, in SQL; the dead paths get a referrers-first order.
4. ``narinfos``: delete pending narinfos that name no store path (crash leftovers, adopted orphans), first of all.
5. ``paths``: level by level, retire dead paths and delete their narinfos.
6. ``objects``: retire and delete every other object nothing needs any more: NARs, listings, logs, realisations,
   and pending objects of pushes that went away.
7. ``upstream``: forget the records of paths proven upstream that no published path references any more (they
   have no objects: nothing is deleted from the bucket).

A dry run stops after marking and counts what the sweep would delete. Every phase change and every few seconds
the counts reach the run's ``gc_runs`` row; the end of a run is one structured log entry (``gc.finished``).
"""

from __future__ import annotations

__all__ = ["SWEEP_CONCURRENCY", "GcContext", "HeldRun", "claim_run", "collect", "refuse_after_unfinished_import"]

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from asyncpg import Connection

from niks3d.config import GcSettings
from niks3d.db import upstream as db_upstream
from niks3d.db.gc import candidates, mark
from niks3d.db.gc.runs import RunRow, finish_run, insert_run, interrupt_abandoned, running_run, try_lock, unlock
from niks3d.db.maintenance import unfinished_import
from niks3d.db.pool import DbPool
from niks3d.errors import Niks3Error, StateConflict
from niks3d.gc import sweep
from niks3d.gc.expiry import count_expirable, drop_expired_roots, expire_sessions
from niks3d.gc.orphans import abort_stale_uploads, adopt_orphans
from niks3d.gc.progress import RunProgress
from niks3d.gc.runs import GcParams, GcRunning, run_owner
from niks3d.gc.staging import sweep_staging
from niks3d.logsetup import log_event
from niks3d.storage.s3 import Bucket
from niks3d.systemd import Notifier

logger = logging.getLogger(__name__)

# Batches of one phase (or one level) that run at once, each on its own database connection.
SWEEP_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class GcContext:
    """What the collector works with: the database, the bucket, the ``[gc]`` settings, and systemd's notifier
    (None: no STATUS= messages, for runs inside the daemon, whose status line belongs to ``serve``)."""

    pool: DbPool
    bucket: Bucket
    settings: GcSettings
    notifier: Notifier | None = None


@dataclass(frozen=True, slots=True)
class HeldRun:
    """A run that holds the collector's lock: the connection holding it (also used for marking) and its row."""

    conn: Connection
    row: RunRow


async def refuse_after_unfinished_import(conn: Connection, doing: str = "garbage collection") -> None:
    """Objects an unfinished import has not registered yet look like orphans, and the paths it has not registered
    yet are referrers nobody sees: refuse rather than delete what they need. Call while holding the lock."""
    run = await unfinished_import(conn)
    if run is not None:
        raise StateConflict(
            f"niks3d import (run {run.id}, started {run.started_at.isoformat()}) is {run.state}, not finished: "
            f"some paths in the bucket are not registered yet, and {doing} could delete what they need. "
            "Run niks3d import again until it finishes (docs/operations.md, 'After an interrupted import')",
            code="import_unfinished",
            import_run=run.id,
        )


@asynccontextmanager
async def claim_run(pool: DbPool, params: GcParams) -> AsyncIterator[HeldRun]:
    """Take the lock and record a new run; raises :class:`GcRunning` if another run holds the lock, and
    StateConflict ``import_unfinished`` while the newest ``niks3d import`` has not finished."""
    async with pool.acquire() as conn:
        if not await try_lock(conn):
            raise GcRunning(await running_run(conn))
        try:
            await refuse_after_unfinished_import(conn)
            for run_id in await interrupt_abandoned(conn):
                logger.warning("gc run %d was left running by a process that stopped; marked interrupted", run_id)
            row = await insert_run(
                conn, params.to_json(), dry_run=params.dry_run, forced=params.force, owner=run_owner()
            )
            yield HeldRun(conn, row)
        finally:
            try:
                await unlock(conn)
            except Exception as exc:  # the connection is gone, and the lock with it
                logger.debug("could not release the gc lock: %s", exc)


async def _in_parallel(pages: AsyncIterator[list[str]], work: Callable[[list[str]], Awaitable[None]]) -> None:
    """Run ``work`` on each page, at most :data:`SWEEP_CONCURRENCY` at once; the first failure cancels the rest."""
    slots = asyncio.Semaphore(SWEEP_CONCURRENCY)

    async def one(page: list[str]) -> None:
        try:
            await work(page)
        finally:
            slots.release()

    async with asyncio.TaskGroup() as group:
        async for page in pages:
            await slots.acquire()
            group.create_task(one(page))


class _Run:
    """The state of one run while it works (see :func:`collect`)."""

    def __init__(
        self, ctx: GcContext, params: GcParams, held: HeldRun, progress: RunProgress, cutoffs: mark.Cutoffs
    ) -> None:
        self.pool = ctx.pool
        self.bucket = ctx.bucket
        self.settings = ctx.settings
        self.params = params
        self.conn = held.conn
        self.progress = progress
        self.cutoffs = cutoffs
        self.grace = cutoffs.grace or cutoffs.start

    def _pages(self, fetch: Callable[[str], Awaitable[list[str]]]) -> AsyncIterator[list[str]]:
        async def pages() -> AsyncIterator[list[str]]:
            after = ""
            while page := await fetch(after):
                yield page
                after = page[-1]

        return pages()

    async def sessions(self) -> None:
        await self.progress.set_phase("sessions")
        c = self.cutoffs
        if self.params.dry_run:
            self.progress.add(await count_expirable(self.pool, now=c.start, retention=c.retention))
            return
        self.progress.add(
            await expire_sessions(self.pool, self.bucket, now=c.start, keep_closed=self.settings.session_expiry)
        )
        self.progress.add({"roots_expired": await drop_expired_roots(self.pool, retention=c.retention)})

    async def orphans(self) -> None:
        await self.progress.set_phase("orphans")
        dry = self.params.dry_run
        self.progress.add(await adopt_orphans(self.pool, self.bucket, grace=self.grace, dry_run=dry))
        self.progress.add(await abort_stale_uploads(self.pool, self.bucket, grace=self.grace, dry_run=dry))
        self.progress.add(await sweep_staging(self.pool, self.bucket, grace=self.grace, dry_run=dry))

    async def mark(self) -> int:
        await self.progress.set_phase("mark")
        await mark.create_tables(self.conn)
        live, depth = await mark.mark(self.conn, self.cutoffs)
        dead = await mark.find_dead(self.conn, self.cutoffs)
        levels, unplaced = await mark.order_dead(self.conn)
        if unplaced:
            logger.warning("%d dead paths lie on a reference cycle and are left alone", unplaced)
        self.progress.add({"paths_live": live, "paths_dead": dead - unplaced, "mark_depth": depth, "levels": levels})
        return levels

    async def sweep_narinfos(self) -> None:
        await self.progress.set_phase("narinfos")
        await candidates.fill_narinfo_candidates(self.conn)

        async def work(keys: list[str]) -> None:
            self.progress.add(await sweep.delete_narinfos(self.pool, self.bucket, keys, grace=self.grace))

        limit = self.params.batch_size
        await _in_parallel(self._pages(lambda after: candidates.key_page(self.conn, after, limit)), work)

    async def sweep_paths(self, levels: int) -> None:
        await self.progress.set_phase("paths")

        async def work(hashes: list[str]) -> None:
            outcome, keys = await sweep.retire_paths(self.pool, hashes, retention=self.cutoffs.retention)
            self.progress.add(outcome)
            if keys:
                self.progress.add(await sweep.delete_narinfos(self.pool, self.bucket, keys, grace=self.grace))

        limit = self.params.batch_size
        for level in range(levels):

            def fetch(after: str, level: int = level) -> Awaitable[list[str]]:
                return mark.dead_page(self.conn, level, after, limit)

            await _in_parallel(self._pages(fetch), work)

    async def sweep_objects(self) -> None:
        await self.progress.set_phase("objects")
        await candidates.fill_object_candidates(self.conn, self.cutoffs)

        async def work(keys: list[str]) -> None:
            outcome, doomed = await sweep.retire_objects(self.pool, keys, grace=self.grace)
            self.progress.add(outcome)
            if doomed:
                self.progress.add(await sweep.delete_objects(self.pool, self.bucket, doomed))

        limit = self.params.batch_size
        await _in_parallel(self._pages(lambda after: candidates.key_page(self.conn, after, limit)), work)

    async def forget_upstream(self) -> None:
        await self.progress.set_phase("upstream")
        limit = self.params.batch_size
        async with self.pool.acquire() as conn:
            while True:
                looked, forgotten = await db_upstream.forget_unreferenced(conn, limit)
                self.progress.add({"upstream_forgotten": forgotten})
                if looked < limit:
                    break

    async def plan(self) -> None:
        await self.progress.set_phase("plan")
        counts, size = await candidates.planned_counts(self.conn, self.cutoffs)
        self.progress.add(counts)
        self.progress.add({"paths_deleted": await mark.dead_count(self.conn)})
        self.progress.add({"upstream_forgotten": await db_upstream.forgettable_count(self.conn)})
        self.progress.bytes_freed += size

    async def run(self) -> None:
        try:
            await self.sessions()
            await self.orphans()
            levels = await self.mark()
            if self.params.dry_run:
                await self.plan()
            else:
                await self.sweep_narinfos()
                await self.sweep_paths(levels)
                await self.sweep_objects()
                await self.forget_upstream()
        finally:
            await asyncio.shield(self._drop_tables())

    async def _drop_tables(self) -> None:
        try:
            await mark.drop_tables(self.conn)
            await candidates.drop_table(self.conn)
        except Exception as exc:  # the connection broke: its temporary tables are gone with it
            logger.debug("could not drop the gc tables: %s", exc)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, Niks3Error):
        return str(exc)
    return f"internal error ({type(exc).__name__}); see the log of {run_owner()}"


async def collect(ctx: GcContext, params: GcParams, held: HeldRun) -> RunRow:
    """Run the collection ``held`` was claimed for, record its end, and return its final row.

    A failure is recorded as ``failed`` (with the error) and raised; a cancellation as ``interrupted``.
    """
    run_id = held.row.id
    pool = ctx.pool
    progress = RunProgress(pool, run_id, ctx.notifier)
    started = time.monotonic()
    progress.start()
    state, error = "finished", None
    try:
        start = await mark.now(held.conn)
        cutoffs = mark.Cutoffs(
            start=start,
            retention=start - params.older_than,
            grace=start - params.grace,
            exclude_stale_claims=params.dry_run,
        )
        await _Run(ctx, params, held, progress, cutoffs).run()
    except asyncio.CancelledError:
        state, error = "interrupted", "cancelled: the process running it is stopping"
        raise
    except Exception as exc:
        state, error = "failed", _error_text(exc)
        logger.error("gc run %d failed in phase %s: %s", run_id, progress.phase, exc, exc_info=True)
        raise
    finally:
        await progress.stop()
        progress.finish()
        final = await asyncio.shield(_record_end(pool, run_id, progress, state, error))
        _log_summary(final, time.monotonic() - started)
    return final


async def _record_end(pool: DbPool, run_id: int, progress: RunProgress, state: str, error: str | None) -> RunRow:
    async with pool.acquire() as conn:
        row = await finish_run(
            conn, run_id, state=state, counts=progress.snapshot(), bytes_freed=progress.bytes_freed, error=error
        )
    progress.notifier.status(f"gc run {run_id} {state}")
    return row


def _log_summary(row: RunRow, seconds: float) -> None:
    """The run's one journal entry: event ``gc.finished`` with every count as a field."""
    c = row.counts
    objects = sum(v for k, v in c.items() if k.endswith("s_deleted") and k != "paths_deleted")
    fields: dict[str, object] = {
        **c,
        "run_id": row.id,
        "state": row.state,
        "dry_run": row.dry_run,
        "forced": row.forced,
        "seconds": round(seconds, 3),
        "objects_deleted": objects,
        "bytes_freed": row.bytes_freed,
    }
    if row.error:
        fields["error"] = row.error
    log_event(
        logger,
        logging.INFO if row.state == "finished" else logging.ERROR,
        "gc.finished",
        "gc run %d %s%s in %.1fs: %d paths and %d objects %s, %d bytes freed",
        row.id,
        row.state,
        " (dry run)" if row.dry_run else "",
        seconds,
        c.get("paths_deleted", 0),
        objects,
        "would be deleted" if row.dry_run else "deleted",
        row.bytes_freed,
        **fields,
    )
