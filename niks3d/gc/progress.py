"""A run's progress: its phase, counts and bytes freed, written to its ``gc_runs`` row and to systemd's STATUS.

The collector updates the in-memory numbers as batches finish; a background task writes them, with the heartbeat,
every :data:`HEARTBEAT_SECONDS` (and at every phase change), so ``GET /api/v1/gc/{id}`` and ``niks3 gc`` can follow
the run and the next run can tell a dead owner from a slow one.
"""

from __future__ import annotations

__all__ = ["COUNT_NAMES", "HEARTBEAT_SECONDS", "RunProgress"]

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping

from niks3d.db.gc.runs import update_run
from niks3d.db.pool import DbPool
from niks3d.gc.sweep import SweepOutcome
from niks3d.systemd import Notifier

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
# Every run records these counts (docs/gc.md explains each), plus "<phase>_ms" for the phases it went through.
COUNT_NAMES = (
    "sessions_expired",
    "sessions_forgotten",
    "roots_expired",
    "uploads_aborted",
    "cleanup_errors",
    "bucket_objects",
    "orphans",
    "orphan_bytes",
    "paths_live",
    "paths_dead",
    "mark_depth",
    "levels",
    "paths_deleted",
    "paths_kept",
    "narinfos_deleted",
    "nars_deleted",
    "listings_deleted",
    "logs_deleted",
    "realisations_deleted",
    "objects_kept",
    "delete_errors",
)


class RunProgress:
    """The live numbers of one run, and the task that keeps its row (and systemd) informed."""

    def __init__(self, pool: DbPool, run_id: int, notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.run_id = run_id
        # None: report nowhere but the database and the log (a run inside the daemon, whose status is serve's).
        self.notifier = notifier if notifier is not None else Notifier(address="")
        self.phase = "starting"
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNT_NAMES, 0))
        self.bytes_freed = 0
        self._phase_started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> dict[str, int]:
        return {name: int(value) for name, value in sorted(self.counts.items())}

    def add(self, counts: Mapping[str, int] | SweepOutcome) -> None:
        if isinstance(counts, SweepOutcome):
            self.counts.update(counts.counts)
            self.bytes_freed += counts.bytes_freed
        else:
            self.counts.update(counts)

    async def set_phase(self, phase: str) -> None:
        """Enter ``phase``; the time spent in the previous one is counted as ``<phase>_ms``."""
        self._end_phase()
        self.phase = phase
        logger.info("gc run %d: %s", self.run_id, phase)
        await self.flush()

    def _end_phase(self) -> None:
        now = time.monotonic()
        if self.phase != "starting":
            self.counts[f"{self.phase}_ms"] += int((now - self._phase_started) * 1000)
        self._phase_started = now

    def finish(self) -> None:
        """Close the timing of the last phase (before the final row is written)."""
        self._end_phase()
        self.phase = "done"

    def status_line(self) -> str:
        c = self.counts
        return (
            f"gc run {self.run_id}: {self.phase}; {c['paths_deleted']} paths and "
            f"{sum(v for k, v in c.items() if k.endswith('s_deleted') and k != 'paths_deleted')} objects deleted, "
            f"{self.bytes_freed} bytes freed"
        )

    async def flush(self) -> None:
        """Write phase, counts, bytes and the heartbeat now."""
        async with self.pool.acquire() as conn:
            await update_run(conn, self.run_id, self.phase, self.snapshot(), self.bytes_freed)
        self.notifier.status(self.status_line())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # a missed heartbeat is not a reason to stop collecting
                logger.warning("gc run %d: could not record progress: %s", self.run_id, exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"gc-{self.run_id}-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
