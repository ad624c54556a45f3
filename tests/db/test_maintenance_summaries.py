"""What ``/metrics`` reads of ``maintenance_runs`` (niks3d/db/maintenance.py ``summaries``): the newest run of each
command, the newest finished one, and "running" only while the collector's lock is held, so that an import
killed with SIGKILL (its row still says running) does not look alive."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from niks3d.config import DatabaseSettings
from niks3d.db import maintenance as db
from niks3d.db.gc.runs import GC_LOCK_KEY
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(DatabaseSettings(url=database_dsn, pool_max_size=4), None) as opened:
        await migrate(opened)
        yield opened


async def test_running_needs_the_lock_and_the_last_finished_run_outlives_newer_ones(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, pool.acquire() as holder:
        assert await db.summaries(conn) == {}
        first = await db.start_run(conn, "import", "test:1")
        seen = (await db.summaries(conn))["import"]
        assert (seen.state, seen.running, seen.finished_at, seen.counts) == ("running", False, None, None)

        await holder.execute("SELECT pg_advisory_lock($1)", GC_LOCK_KEY)
        assert (await db.summaries(conn))["import"].running is True
        # another key, or the same number as a pair of int4 keys, is not the collector's lock
        await holder.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)
        await holder.execute("SELECT pg_advisory_lock($1)", GC_LOCK_KEY + 1)
        await holder.execute("SELECT pg_advisory_lock($1, $2)", GC_LOCK_KEY >> 32, GC_LOCK_KEY & 0xFFFFFFFF)
        assert (await db.summaries(conn))["import"].running is False
        await holder.execute("SELECT pg_advisory_unlock_all()")

        await db.finish_run(conn, first.id, state="finished", counts={"paths_registered": 7}, problems=2, error=None)
        await db.start_run(conn, "fsck", "test:1")
        await holder.execute("SELECT pg_advisory_lock($1)", GC_LOCK_KEY)
        second = await db.start_run(conn, "import", "test:2")
        runs = await db.summaries(conn)
        assert set(runs) == {"import", "fsck"}
        imp = runs["import"]
        assert (imp.state, imp.running, imp.started_at) == ("running", True, second.started_at)
        assert imp.counts == {"paths_registered": 7} and imp.problems == 2 and imp.finished_at is not None
        assert runs["fsck"].running is True and runs["fsck"].finished_at is None

        await db.finish_run(conn, second.id, state="failed", counts={"paths_registered": 1}, problems=0, error="x")
        imp = (await db.summaries(conn))["import"]
        assert (imp.state, imp.running, imp.counts) == ("failed", False, {"paths_registered": 7})
