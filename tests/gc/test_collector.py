"""Whole collector runs against real PostgreSQL and SeaweedFS: what goes, what stays, and what a run records."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import asyncpg
import pytest

from niks3d.gc import GcContext, GcParams, GcRunning, claim_run
from niks3d.nix.bucketkeys import staging_key
from niks3d.storage import Bucket
from tests.gc.gckit import Cache, run_gc

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


async def _session(pool: asyncpg.Pool, *, expires_in: timedelta = timedelta(hours=1)) -> uuid.UUID:
    session = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO upload_sessions (id, token_name, expires_at, request, request_digest)
               VALUES ($1, 'ci', now() + $2::interval, '{}', 'x')""",
            session,
            expires_in,
        )
    return session


async def _claim(pool: asyncpg.Pool, session: uuid.UUID, key: str, kind: str, *, upload_id: str | None = None) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO objects (key, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING", key, kind)
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader, upload_id) VALUES ($1, $2, true, $3)",
            session,
            key,
            upload_id,
        )


async def test_expired_paths_go_while_live_closures_and_shared_objects_stay(cache: Cache, ctx: GcContext) -> None:
    libc = await cache.add_path("libc", log=True)
    shared = await cache.add_path("shared", [libc], log=True)
    app = await cache.add_path("app", [shared, libc], root=True, root_age=timedelta(days=3), self_ref=True)
    gone_dep = await cache.add_path("gone-dep", [libc], log=True)
    gone = await cache.add_path("gone", [gone_dep, shared], root=True, root_age=timedelta(days=45))
    twin = await cache.add_path("twin", root=True, root_age=timedelta(days=45), nar_from=app)  # shares app's NAR
    await cache.check()
    row = await run_gc(ctx)
    assert row.state == "finished" and row.error is None
    keys = await cache.check()
    for live in (libc, shared, app):
        assert live.keys <= keys, live.path
    for dead in (gone, gone_dep):
        assert not dead.keys & keys, dead.path
    assert twin.narinfo_key not in keys and app.nar_key in keys  # the shared NAR stays with its live user
    assert await cache.published() == {libc.hash, shared.hash, app.hash}
    c = row.counts
    assert (c["paths_deleted"], c["roots_expired"], c["nars_deleted"], c["logs_deleted"]) == (3, 2, 2, 1)
    assert c["narinfos_deleted"] == 3 and c["listings_deleted"] == 3
    assert row.bytes_freed > 0
    again = await run_gc(ctx)
    assert again.counts["paths_deleted"] == 0 and again.bytes_freed == 0


async def test_a_proven_build_log_is_collected_like_any_other(cache: Cache, ctx: GcContext) -> None:
    """A log published with its proof (migration 0007) goes pending, then away, with its path: the sweep's
    "may be gone" mark drops the proof with the presence, which only a present log can have."""
    gone = await cache.add_path("gone", root=True, root_age=timedelta(days=45), log=True)
    kept = await cache.add_path("kept", root=True, root_age=timedelta(days=1), log=True)
    async with cache.pool.acquire() as conn:
        await conn.execute("UPDATE objects SET proven = true WHERE kind = 'log'")
    row = await run_gc(ctx)
    assert row.state == "finished" and row.error is None, row.error
    assert row.counts["logs_deleted"] == 1
    keys = await cache.check()
    assert not gone.keys & keys and kept.keys <= keys
    assert [r["proven"] for r in await cache.fetch("SELECT proven FROM objects WHERE kind = 'log'")] == [True]


async def test_a_dry_run_reports_what_a_run_deletes_and_changes_nothing(cache: Cache, ctx: GcContext) -> None:
    dep = await cache.add_path("dep", log=True)
    await cache.add_path("old", [dep], root=True, root_age=timedelta(days=40))
    await cache.add_path("new", root=True, root_age=timedelta(days=1))
    before_keys, before_rows = await cache.bucket_keys(), await cache.object_rows()
    planned = await run_gc(ctx, dry_run=True)
    assert (await cache.bucket_keys(), await cache.object_rows()) == (before_keys, before_rows)
    assert len(await cache.fetch("SELECT 1 FROM roots")) == 2
    done = await run_gc(ctx)
    deleted = {k: v for k, v in done.counts.items() if k.endswith("_deleted")}
    assert deleted == {k: v for k, v in planned.counts.items() if k.endswith("_deleted")}
    assert deleted["paths_deleted"] == 2 and planned.bytes_freed == done.bytes_freed
    assert planned.dry_run and not done.dry_run


async def test_the_grace_period_protects_young_paths_until_a_run_is_forced(cache: Cache, ctx: GcContext) -> None:
    dep = await cache.add_path("dep", age=timedelta(minutes=10))
    young = await cache.add_path("young", [dep], age=timedelta(minutes=10))  # pushed without a root
    row = await run_gc(ctx)
    assert row.counts["paths_deleted"] == 0
    assert young.keys | dep.keys <= await cache.check()
    row = await run_gc(ctx, force=True)
    assert row.counts["paths_deleted"] == 2 and row.forced
    assert not (young.keys | dep.keys) & await cache.check()


async def test_an_open_session_keeps_the_paths_it_claims_and_the_objects_it_uploads(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    dep = await cache.add_path("dep")
    cached = await cache.add_path("cached", [dep], root=True, root_age=timedelta(days=40))
    session = await _session(pool)
    await _claim(pool, session, cached.narinfo_key, "narinfo")  # the push will reference the published path
    upload = "nar/" + "1" * 52 + ".nar.zst"
    await _claim(pool, session, upload, "nar")
    await bucket.put(upload, b"half", content_type="application/x-nix-nar")
    row = await run_gc(ctx, force=True)
    assert row.counts["paths_deleted"] == 0
    keys = await cache.check()
    assert cached.keys | dep.keys | {upload} <= keys
    # the session goes away: the paths it held are garbage now, its fresh upload once the grace period is over
    async with pool.acquire() as conn:
        await conn.execute("UPDATE upload_sessions SET state = 'aborted' WHERE id = $1", session)
        await conn.execute("DELETE FROM session_claims WHERE session_id = $1", session)
    row = await run_gc(ctx)
    assert (row.counts["paths_deleted"], row.counts["nars_deleted"]) == (2, 2)
    keys = await cache.check()
    assert not (cached.keys | dep.keys) & keys and upload in keys
    assert (await run_gc(ctx, force=True)).counts["nars_deleted"] == 1
    assert upload not in await cache.check()


async def test_pending_objects_of_a_gone_push_wait_for_the_grace_period(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    key = "nar/" + "2" * 52 + ".nar.zst"
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO objects (key, kind) VALUES ($1, 'nar')", key)
    await bucket.put(key, b"partial upload", content_type="application/x-nix-nar")
    assert (await run_gc(ctx)).counts.get("nars_deleted", 0) == 0
    assert key in await cache.check()
    async with pool.acquire() as conn:
        await conn.execute("UPDATE objects SET created_at = now() - interval '2 hours' WHERE key = $1", key)
    assert (await run_gc(ctx)).counts["nars_deleted"] == 1
    assert key not in await cache.check()


async def test_stale_sessions_expire_and_their_multipart_uploads_are_aborted(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool, bucket: Bucket
) -> None:
    big = "nar/" + "3" * 52 + ".nar.zst"
    stale = await _session(pool, expires_in=timedelta(seconds=-1))
    # a session's multipart uploads live under its staging keys (docs/security.md, rule 2)
    upload_id = await bucket.create_multipart(staging_key(str(stale), big), content_type="application/x-nix-nar")
    await _claim(pool, stale, big, "nar", upload_id=upload_id)
    live = await _session(pool)
    live_key = "nar/" + "4" * 52 + ".nar.zst"
    live_upload = await bucket.create_multipart(staging_key(str(live), live_key), content_type="application/x-nix-nar")
    await _claim(pool, live, live_key, "nar", upload_id=live_upload)
    row = await run_gc(ctx, force=True)
    assert row.counts["sessions_expired"] == 1 and row.counts["uploads_aborted"] == 1
    states = {r["id"]: r["state"] for r in await cache.fetch("SELECT id, state FROM upload_sessions")}
    assert states == {stale: "expired", live: "open"}
    uploads = {u.upload_id async for u in bucket.iter_multipart_uploads()}
    assert uploads == {live_upload}
    rows = await cache.object_rows()
    assert big not in rows and live_key in rows


async def test_untracked_objects_are_collected_but_foreign_keys_and_nix_cache_info_stay(
    cache: Cache, ctx: GcContext, bucket: Bucket
) -> None:
    kept = await cache.add_path("kept", root=True, root_age=timedelta(hours=1))
    untracked = ["nar/" + "5" * 52 + ".nar.zst", "0" * 32 + ".narinfo", "0" * 32 + ".ls"]
    foreign = ["nix-cache-info", "README.txt", "nar/not-a-nar", "e" * 32 + ".narinfo"]  # e is not a nix32 character
    for key in untracked + foreign:
        await bucket.put(key, b"stray", content_type="text/plain")
    abandoned = await bucket.create_multipart("nar/" + "6" * 52 + ".nar.zst", content_type="application/x-nix-nar")
    row = await run_gc(ctx)  # everything was written just now: the grace period protects it
    assert row.counts.get("orphans", 0) == 0 and row.counts.get("uploads_aborted", 0) == 0
    row = await run_gc(ctx, force=True)
    assert row.counts["orphans"] == 3 and row.counts["uploads_aborted"] == 1
    keys = await cache.bucket_keys()
    assert not set(untracked) & keys
    assert set(foreign) <= keys and kept.keys <= keys
    assert abandoned not in {u.upload_id async for u in bucket.iter_multipart_uploads()}


async def test_a_second_run_is_refused_while_one_is_active_and_names_it(ctx: GcContext) -> None:
    params = GcParams(older_than=timedelta(days=30), grace_period=timedelta(hours=1))
    async with claim_run(ctx.pool, params) as held:
        with pytest.raises(GcRunning) as refused:
            async with claim_run(ctx.pool, params):
                pass
        assert refused.value.run is not None and refused.value.run.id == held.row.id
        assert f"run {held.row.id} is already running since" in str(refused.value)
    async with claim_run(ctx.pool, params) as again:  # the lock went with the first run
        assert again.row.id == held.row.id + 1


async def test_a_run_left_running_by_a_dead_process_is_marked_interrupted(ctx: GcContext, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        ghost = await conn.fetchval(
            """INSERT INTO gc_runs (state, phase, params, dry_run, forced, owner, heartbeat_at)
               VALUES ('running', 'paths', '{}', false, false, 'gone:1', now() - interval '1 hour') RETURNING id"""
        )
    row = await run_gc(ctx)
    assert row.state == "finished"
    (ghost_row,) = await _rows(pool, ghost)
    assert ghost_row["state"] == "interrupted" and ghost_row["finished_at"] is not None
    assert "the process running it stopped" in ghost_row["error"]


async def _rows(pool: asyncpg.Pool, run_id: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM gc_runs WHERE id = $1", run_id))


async def test_a_run_ends_with_one_structured_summary_and_a_durable_record(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await cache.add_path("old", root=True, root_age=timedelta(days=40))
    with caplog.at_level(logging.INFO, logger="niks3d.gc"):
        row = await run_gc(ctx)
    summaries = [r for r in caplog.records if getattr(r, "event", None) == "gc.finished"]
    assert len(summaries) == 1
    fields = summaries[0].fields  # type: ignore[attr-defined]
    assert fields["run_id"] == row.id and fields["state"] == "finished"
    assert fields["paths_deleted"] == 1 and fields["objects_deleted"] == 3 and fields["bytes_freed"] == row.bytes_freed
    (stored,) = await _rows(pool, row.id)
    assert stored["state"] == "finished" and stored["counts"] == row.counts and stored["phase"] == "done"
    assert {"mark_ms", "paths_ms", "objects_ms"} <= set(stored["counts"])
