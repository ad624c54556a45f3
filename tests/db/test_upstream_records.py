"""Records of paths proven upstream (migration 0002, niks3d/db/upstream.py): their constraints, and the locks
that keep GC's forgetting from racing a publication that leans on the same record (docs/database.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from niks3d.config import DatabaseSettings
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool
from niks3d.db.upstream import UpstreamRecord, forget_unreferenced, insert_records
from tests.db.test_schema import DEP, OTHER, TEST, add_path, count

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(DatabaseSettings(url=database_dsn, pool_max_size=4), None) as opened:
        await migrate(opened)
        yield opened


RECORD = UpstreamRecord(
    hash=DEP,
    name="protodep",
    nar_hash="sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk",
    nar_size=128,
    refs=(),
    signature="upstream-1:" + "A" * 86 + "==",
)


async def _records(pool: asyncpg.Pool) -> list[str]:
    return [r["hash"] for r in await pool.fetch("SELECT hash FROM upstream_paths ORDER BY hash")]


async def test_a_record_lives_while_referenced_and_is_forgotten_after(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    await add_path(pool, OTHER)
    async with pool.acquire() as conn, conn.transaction():
        await insert_records(conn, [RECORD], [(TEST, DEP), (OTHER, DEP)])
    async with pool.acquire() as conn:
        assert await forget_unreferenced(conn, 10) == (0, 0)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("DELETE FROM upstream_paths")  # RESTRICT: never under a referrer
        await conn.execute("DELETE FROM store_paths WHERE hash = $1", TEST)
        assert await forget_unreferenced(conn, 10) == (0, 0)
        await conn.execute("DELETE FROM store_paths WHERE hash = $1", OTHER)
        assert await count(pool, "SELECT count(*) FROM upstream_references") == 0  # CASCADE with the referrer
        assert await forget_unreferenced(conn, 10) == (1, 1)
    assert await _records(pool) == []


async def test_a_reference_needs_a_record_and_a_published_referrer(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO upstream_references (referrer, reference) VALUES ($1, $2)", TEST, DEP)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await insert_records(conn, [RECORD], [(OTHER, DEP)])
    bad = [
        {"hash": "not-a-hash"},
        {"nar_hash": "sha256:xyz"},
        {"nar_size": 0},
        {"signature": "no colon here"},
        {"name": "../etc"},
    ]
    for change in bad:
        row = {f: getattr(RECORD, f) for f in ("hash", "name", "nar_hash", "nar_size", "signature")}
        row.update(change)
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "INSERT INTO upstream_paths (hash, name, nar_hash, nar_size, refs, signature) "
                "VALUES ($1, $2, $3, $4, '{}', $5)",
                *row.values(),
            )


async def test_gc_skips_a_record_a_publication_holds(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    async with pool.acquire() as conn:
        await insert_records(conn, [RECORD], [])  # unreferenced: what GC forgets
    async with pool.acquire() as publisher, pool.acquire() as gc:
        publication = publisher.transaction()
        await publication.start()
        # The window between the upsert and the reference: the upsert alone must hold the row.
        await insert_records(publisher, [RECORD], [])
        assert await forget_unreferenced(gc, 10) == (0, 0), "GC took a row a publication holds"
        await insert_records(publisher, [], [(TEST, DEP)])
        await publication.commit()
        assert await forget_unreferenced(gc, 10) == (0, 0)
    assert await _records(pool) == [DEP]


async def test_a_publication_that_waited_for_gc_records_the_path_again(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    async with pool.acquire() as conn:
        await insert_records(conn, [RECORD], [])
    async with pool.acquire() as publisher, pool.acquire() as gc:
        # GC's two statements, held open: it has locked and deleted the unreferenced record.
        forgetting = gc.transaction()
        await forgetting.start()
        await gc.execute("SELECT hash FROM upstream_paths FOR UPDATE SKIP LOCKED")
        await gc.execute("DELETE FROM upstream_paths WHERE hash = $1", DEP)

        async def publish() -> None:
            async with publisher.transaction():
                await insert_records(publisher, [RECORD], [(TEST, DEP)])

        publishing = asyncio.create_task(publish())
        await asyncio.sleep(0.3)
        assert not publishing.done(), "the publication did not wait for GC's lock"
        await forgetting.commit()
        await asyncio.wait_for(publishing, 10)  # no foreign-key violation: the record was inserted again
    assert await _records(pool) == [DEP]
    assert await count(pool, "SELECT count(*) FROM upstream_references") == 1
