"""Marking in PostgreSQL: what counts as a root, that the closure of every root is live, and that dead paths are
ordered referrers first (a path's level is always higher than the level of every dead path that references it)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta

import asyncpg
import pytest

from niks3d.db.gc import mark
from tests.gc.gckit import Cache, Seeded

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


async def _mark(
    pool: asyncpg.Pool, *, grace: timedelta = timedelta(hours=1), older_than: timedelta = timedelta(days=30)
) -> tuple[set[str], dict[str, int], int, int]:
    async with pool.acquire() as conn:
        start: datetime = await conn.fetchval("SELECT now()")
        cutoffs = mark.Cutoffs(start=start, retention=start - older_than, grace=start - grace)
        await mark.create_tables(conn)
        await mark.mark(conn, cutoffs)
        await mark.find_dead(conn, cutoffs)
        levels, unplaced = await mark.order_dead(conn)
        live = {r["hash"] for r in await conn.fetch("SELECT hash FROM gc_live")}
        dead = {r["hash"]: r["level"] for r in await conn.fetch("SELECT hash, level FROM gc_dead")}
        await mark.drop_tables(conn)
    return live, dead, levels, unplaced


async def test_roots_pins_claims_and_young_paths_keep_their_closures(cache: Cache, pool: asyncpg.Pool) -> None:
    lib = await cache.add_path("lib")
    app = await cache.add_path("app", [lib], root=True, root_age=timedelta(days=1))
    old_dep = await cache.add_path("old-dep")
    old = await cache.add_path("old", [old_dep], root=True, root_age=timedelta(days=40))
    pinned_dep = await cache.add_path("pinned-dep")
    pinned = await cache.add_path("pinned", [pinned_dep], pin="keep")
    claimed_dep = await cache.add_path("claimed-dep")
    claimed = await cache.add_path("claimed", [claimed_dep])
    young_dep = await cache.add_path("young-dep")
    young = await cache.add_path("young", [young_dep], age=timedelta(minutes=5))
    loose = await cache.add_path("loose")
    async with pool.acquire() as conn:
        session = uuid.uuid4()
        await conn.execute(
            """INSERT INTO upload_sessions (id, token_name, expires_at, request, request_digest)
               VALUES ($1, 'ci', now() + interval '1 hour', '{}', 'x')""",
            session,
        )
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)",
            session,
            claimed.narinfo_key,
        )
    live, dead, _, _ = await _mark(pool)
    assert live == {p.hash for p in (lib, app, pinned_dep, pinned, claimed_dep, claimed, young_dep, young)}
    assert set(dead) == {old.hash, old_dep.hash, loose.hash}

    # with no grace period the young path is garbage as well; a longer retention keeps the old root
    live, dead, _, _ = await _mark(pool, grace=timedelta(0), older_than=timedelta(days=50))
    assert {young.hash, young_dep.hash} <= set(dead)
    assert {old.hash, old_dep.hash} <= live


async def test_dead_paths_are_ordered_referrers_first(cache: Cache, pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    paths: list[Seeded] = []
    for i in range(60):
        refs = rng.sample(paths, k=min(len(paths), rng.randint(0, 4)))
        paths.append(await cache.add_path(f"p{i}", refs, self_ref=rng.random() < 0.5))
    live, dead, levels, unplaced = await _mark(pool)
    assert not live and unplaced == 0 and len(dead) == 60
    edges = await cache.fetch("SELECT referrer, reference FROM path_references WHERE referrer <> reference")
    assert edges
    for edge in edges:
        assert dead[edge["referrer"]] < dead[edge["reference"]], dict(edge)
    assert levels == max(dead.values()) + 1
    # the longest chain decides the number of levels, not the number of paths
    assert levels < 60
