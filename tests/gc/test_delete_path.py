"""Deleting a store path on request: refused while something holds it, forced with its referrers, or with
everything only it keeps alive; always narinfos first, and never an object another path still needs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from niks3d.errors import NotFound, StateConflict
from niks3d.gc import GcContext, GcParams, GcRunning, claim_run, delete_path
from niks3d.nix.bucketkeys import STAGING_PREFIX, staging_key
from tests.gc.gckit import Cache, Seeded

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


async def _delete(ctx: GcContext, path: Seeded, *, closure: bool = False, force: bool = False) -> dict[str, Any]:
    return await delete_path(
        ctx, path.hash, closure=closure, force=force, older_than=timedelta(days=30), requested_by="test"
    )


async def test_a_path_that_something_holds_is_refused_with_the_names_of_the_holders(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool
) -> None:
    secret = await cache.add_path("secret", pin="release")
    app = await cache.add_path("app", [secret], root=True, root_age=timedelta(days=1))
    session = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO upload_sessions (id, token_name, expires_at, request, request_digest)
               VALUES ($1, 'ci', now() + interval '1 hour', '{}', 'x')""",
            session,
        )
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)", session, secret.narinfo_key
        )
    with pytest.raises(StateConflict) as refused:
        await _delete(ctx, secret)
    error = refused.value
    assert error.code == "path_in_use"
    assert error.details == {"pins": ["release"], "referrers": [app.path.path], "sessions": [str(session)]}
    assert "pinned as release" in error.message and app.path.path in error.message and "force=1" in error.message
    assert await cache.published() == {secret.hash, app.hash}
    with pytest.raises(NotFound) as missing:
        await delete_path(ctx, "0" * 32, closure=False, force=False, older_than=timedelta(days=30), requested_by="test")
    assert missing.value.code == "path_not_found"


async def test_force_deletes_the_path_and_everything_that_references_it(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool
) -> None:
    libc = await cache.add_path("libc")
    secret = await cache.add_path("secret", [libc], pin="release", log=True)
    app = await cache.add_path("app", [secret, libc], root=True, root_age=timedelta(days=1), self_ref=True)
    top = await cache.add_path("top", [app], root=True, root_age=timedelta(days=1))
    other = await cache.add_path("other", [libc], root=True, root_age=timedelta(days=1), nar_from=secret)
    answer = await _delete(ctx, secret, force=True)
    assert sorted(answer["deleted"]) == sorted(p.path.path for p in (secret, app, top))
    assert answer["kept"] == [] and answer["counts"]["paths_deleted"] == 3
    keys = await cache.check()
    assert not (secret.keys - {secret.nar_key}) & keys and not (app.keys | top.keys) & keys
    assert secret.nar_key in keys  # other path has identical contents: the NAR stays with it
    assert libc.keys | other.keys <= keys
    assert await cache.fetch("SELECT * FROM pins") == []


async def test_closure_deletes_what_only_the_path_keeps_alive(cache: Cache, ctx: GcContext) -> None:
    shared = await cache.add_path("shared")
    own = await cache.add_path("own", log=True)
    deep = await cache.add_path("deep")
    own_mid = await cache.add_path("own-mid", [deep])
    secret = await cache.add_path("secret", [own, own_mid, shared], root=True, root_age=timedelta(hours=2))
    await cache.add_path("keeper", [shared], root=True, root_age=timedelta(days=1))
    pinned = await cache.add_path("pinned", [deep], pin="keep-deep")
    answer = await _delete(ctx, secret, closure=True)
    assert sorted(answer["deleted"]) == sorted(p.path.path for p in (secret, own, own_mid))
    keys = await cache.check()
    assert not (secret.keys | own.keys | own_mid.keys) & keys
    assert shared.keys | deep.keys | pinned.keys <= keys
    assert answer["objects_deleted"] == 3 + 3 + 3 + 1  # narinfos, NARs, listings and own's log
    assert answer["bytes_freed"] > 0


async def test_a_deletion_waits_for_no_run_and_says_one_is_active(cache: Cache, ctx: GcContext) -> None:
    path = await cache.add_path("p")
    params = GcParams(older_than=timedelta(days=30), grace_period=timedelta(hours=1))
    async with claim_run(ctx.pool, params) as held:
        with pytest.raises(GcRunning) as busy:
            await _delete(ctx, path)
        assert busy.value.run is not None and busy.value.run.id == held.row.id
    assert (await _delete(ctx, path))["deleted"] == [path.path.path]


async def test_force_aborts_the_claiming_sessions_multipart_uploads_under_their_staging_keys(
    cache: Cache, ctx: GcContext, pool: asyncpg.Pool
) -> None:
    secret = await cache.add_path("secret")
    session = uuid.uuid4()
    staged = staging_key(str(session), secret.narinfo_key)
    upload_id = await ctx.bucket.create_multipart(staged, content_type="application/octet-stream")
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO upload_sessions (id, token_name, expires_at, request, request_digest)
               VALUES ($1, 'ci', now() + interval '1 hour', '{}', 'x')""",
            session,
        )
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader, upload_id) VALUES ($1, $2, true, $3)",
            session,
            secret.narinfo_key,
            upload_id,
        )
    answer = await _delete(ctx, secret, force=True)
    assert answer["deleted"] == [secret.path.path]
    assert [r["state"] for r in await cache.fetch("SELECT state FROM upload_sessions WHERE id = $1", session)] == [
        "aborted"
    ]
    assert await cache.fetch("SELECT * FROM session_claims") == []
    left = [u.upload_id async for u in ctx.bucket.iter_multipart_uploads(STAGING_PREFIX)]
    assert upload_id not in left, "the session's multipart upload lives under its staging key and must be aborted"
