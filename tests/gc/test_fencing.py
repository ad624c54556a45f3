"""The sweep against pushes, step by step: the interleavings the locking rules of docs/database.md promise to make
safe, forced one at a time with real row locks (a push's statement blocks on the sweep's lock, the sweep waits inside
its S3 delete), and the crash points between the sweep's two steps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from niks3d.db import uploads
from niks3d.db.retry import retry_transaction
from niks3d.gc import GcContext, sweep
from niks3d.storage import Bucket
from niks3d.storage.models import DeleteResult
from tests.gc.gckit import Cache, run_gc

pytestmark = [pytest.mark.postgres, pytest.mark.s3]
BLOCKED = 0.5  # how long a statement must stay blocked to count as waiting for a lock


class GatedBucket:
    """The test's bucket, whose ``delete_many`` waits for ``gate`` after signalling ``entered``."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def delete_many(self, keys: Sequence[str]) -> DeleteResult:
        self.entered.set()
        await self.gate.wait()
        return await self.bucket.delete_many(keys)


async def _open_session(pool: asyncpg.Pool) -> uuid.UUID:
    session = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO upload_sessions (id, token_name, expires_at, request, request_digest)
               VALUES ($1, 'ci', now() + interval '1 hour', '{}', 'x')""",
            session,
        )
    return session


async def _sweep_path(pool: asyncpg.Pool, bucket: Bucket, hash_part: str) -> None:
    """Both steps for one path: its row goes and its narinfo is deleted (its other objects stay)."""
    _, keys = await sweep.retire_paths(pool, [hash_part], retention=None)
    await sweep.delete_narinfos(pool, bucket, keys, grace=datetime.now(UTC))


async def _still_blocked(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(BLOCKED)
    return not task.done()


async def test_a_push_claiming_an_object_being_deleted_waits_then_uploads_it_again(
    cache: Cache, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    gone = await cache.add_path("gone")
    await _sweep_path(pool, bucket, gone.hash)  # the path went; its NAR is garbage now
    _, doomed = await sweep.retire_objects(pool, [gone.nar_key], grace=datetime.now(UTC))
    assert doomed == [gone.nar_key]
    gated = GatedBucket(bucket)
    deleting = asyncio.create_task(sweep.delete_objects(pool, gated, doomed))  # type: ignore[arg-type]
    await gated.entered.wait()
    session = await _open_session(pool)

    async def claim() -> dict[str, str]:
        async with pool.acquire() as conn, conn.transaction():
            await uploads.ensure_objects(conn, [(gone.nar_key, "nar")])
            states = await uploads.lock_objects(conn, [gone.nar_key])
            await uploads.insert_claims(conn, session, [(gone.nar_key, True)])
            return states

    claiming = asyncio.create_task(retry_transaction(claim))
    assert await _still_blocked(claiming), "the push did not wait for the sweep's lock"
    gated.gate.set()
    outcome = await deleting
    assert outcome.counts["nars_deleted"] == 1
    states = await claiming  # it found the row gone, ran again, and created it afresh
    assert states in ({gone.nar_key: "pending"}, {})
    assert (await cache.object_rows())[gone.nar_key] == "pending"
    assert gone.nar_key not in await cache.bucket_keys()  # so the push uploads it again, after the delete


async def test_a_claim_that_lands_before_the_lock_is_seen_by_the_recheck(cache: Cache, pool: asyncpg.Pool) -> None:
    dead = await cache.add_path("dead")
    session = await _open_session(pool)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)", session, dead.narinfo_key
        )
        retiring = asyncio.create_task(sweep.retire_paths(pool, [dead.hash], retention=None))
        assert await _still_blocked(retiring), "the sweep did not wait for the claim's key-share lock"
        await tx.commit()
    outcome, keys = await retiring
    assert (outcome.counts["paths_deleted"], outcome.counts["paths_kept"], keys) == (0, 1, [])
    assert dead.hash in await cache.published()
    assert dead.keys <= await cache.check()


async def test_a_reference_published_while_a_path_is_retired_keeps_it(cache: Cache, pool: asyncpg.Pool) -> None:
    dep = await cache.add_path("dep")
    fresh = await cache.add_path("fresh")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()  # a publication in progress: it inserts a reference to dep, not yet committed
        await conn.execute("INSERT INTO path_references (referrer, reference) VALUES ($1, $2)", fresh.hash, dep.hash)
        retiring = asyncio.create_task(sweep.retire_paths(pool, [dep.hash], retention=None))
        assert await _still_blocked(retiring)
        await tx.commit()
    outcome, _ = await retiring
    assert outcome.counts["paths_kept"] == 1 and dep.hash in await cache.published()


async def test_a_crash_after_retiring_leaves_nothing_that_claims_to_be_present(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool
) -> None:
    dep = await cache.add_path("dep", log=True)
    top = await cache.add_path("top", [dep], root=True, root_age=timedelta(days=40))
    await run_gc(ctx, dry_run=True)
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM roots")
    # step 1 of both paths commits; the collector dies before any S3 delete
    for path in (top, dep):
        _, keys = await sweep.retire_paths(pool, [path.hash], retention=None)
        assert keys == [path.narinfo_key]
    rows = await cache.object_rows()
    assert rows[top.narinfo_key] == rows[dep.narinfo_key] == "pending"
    assert await cache.published() == set()  # a push now publishes them anew, uploading what it needs
    _, doomed = await sweep.retire_objects(pool, sorted(top.keys | dep.keys - {top.narinfo_key, dep.narinfo_key}),
                                           grace=datetime.now(UTC))  # fmt: skip
    assert (await cache.object_rows())[dep.nar_key] == "pending"
    await cache.check()  # stale narinfos still name their NARs, which are still there
    row = await run_gc(ctx)  # the next run finishes the job: narinfos first
    assert row.counts["narinfos_deleted"] == 2 and row.counts["nars_deleted"] == 2
    assert not (top.keys | dep.keys) & await cache.check()
    assert await cache.object_rows() == {}
    assert doomed


async def test_a_crash_between_the_s3_delete_and_the_commit_is_finished_by_the_next_run(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    gone = await cache.add_path("gone", log=True)

    class CrashingBucket:
        async def delete_many(self, keys: Sequence[str]) -> DeleteResult:
            await bucket.delete_many(keys)
            raise ConnectionError("the collector died here")

    await _sweep_path(pool, bucket, gone.hash)
    keys = sorted(gone.keys - {gone.narinfo_key})
    _, doomed = await sweep.retire_objects(pool, keys, grace=datetime.now(UTC))
    with pytest.raises(ConnectionError):
        await sweep.delete_objects(pool, CrashingBucket(), doomed)  # type: ignore[arg-type]
    rows = await cache.object_rows()
    assert all(rows[k] == "pending" for k in keys)  # gone from the bucket, and no row says present
    await cache.check()
    row = await run_gc(ctx)
    assert row.counts["nars_deleted"] == 1 and not set(keys) & set(await cache.object_rows())


async def test_a_stale_narinfo_is_deleted_even_when_a_session_claims_its_key(
    cache: Cache, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    path = await cache.add_path("p")
    await sweep.retire_paths(pool, [path.hash], retention=None)  # then the collector died
    session = await _open_session(pool)
    async with pool.acquire() as conn:  # a new push of the same path claims the narinfo it will write
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)", session, path.narinfo_key
        )
    outcome = await sweep.delete_narinfos(pool, bucket, [path.narinfo_key], grace=datetime.now(UTC))
    assert outcome.counts["narinfos_deleted"] == 0  # the row stays for the claim...
    assert (await cache.object_rows())[path.narinfo_key] == "pending"
    assert path.narinfo_key not in await cache.bucket_keys()  # ...but the old bytes went before its NAR can
