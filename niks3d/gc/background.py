"""Runs started through the API: the daemon claims the run at once (so it can answer with its id) and collects in
a background task, which it cancels when it stops (the run is then recorded as interrupted)."""

from __future__ import annotations

__all__ = ["BackgroundCollector"]

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from niks3d.db.gc.runs import RunRow
from niks3d.gc.collector import GcContext, claim_run, collect
from niks3d.gc.runs import GcParams

logger = logging.getLogger(__name__)


class BackgroundCollector:
    """Starts runs in the background for one daemon; at most one of its own at a time (the lock sees to the rest)."""

    def __init__(self, ctx: GcContext) -> None:
        self.ctx = ctx
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, params: GcParams) -> RunRow:
        """Claim a run and start collecting; returns the new run's row. Raises GcRunning if one is active."""
        stack = AsyncExitStack()
        held = await stack.enter_async_context(claim_run(self.ctx.pool, params))

        async def work() -> None:
            async with stack:
                await collect(self.ctx, params, held)

        task = asyncio.create_task(work(), name=f"gc-run-{held.row.id}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return held.row

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # collect() logged the failure and recorded it in the run's row
            logger.debug("background gc task %s ended with %r", task.get_name(), task.exception())

    async def close(self) -> None:
        """Cancel the runs in progress and wait until they have recorded that they were interrupted."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
