"""Opening a session whose paths are all published: the open completes it (docs/api.md), with every check a
complete would make, against real PostgreSQL and SeaweedFS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg

from tests.server.bucketview import table_counts
from tests.server.pushkit import PushKit, make_closure


async def _publish(kit: PushKit, paths: list, roots: list) -> dict:
    session = await kit.open(paths, roots, expect=201)
    assert "state" not in session
    reports = await kit.upload(session, paths)
    return await kit.complete(session["session_id"], reports)


async def _last_pushed(dsn: str, hashes: list[str]) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT hash, last_pushed_at FROM roots WHERE hash = ANY($1::text[])", hashes)
        return {r["hash"]: r["last_pushed_at"] for r in rows}
    finally:
        await conn.close()


async def test_an_all_cached_open_is_completed_with_its_roots_and_no_claims(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=31, n=4)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        await _publish(kit, paths, paths[-1:])
        before = await _last_pushed(daemon.dsn, [paths[-1].hash, paths[0].hash])
        assert list(before) == [paths[-1].hash]
        # Again, with another root among the cached paths: both are roots now, and nothing is claimed.
        again = await kit.open(paths, [paths[0], paths[-1]], expect=201)
        assert again["state"] == "completed"
        assert [e["status"] for e in again["paths"]] == ["cached"] * len(paths)
        assert (await table_counts(daemon.dsn))["session_claims"] == 0
        after = await _last_pushed(daemon.dsn, [paths[-1].hash, paths[0].hash])
        assert set(after) == {paths[-1].hash, paths[0].hash}
        assert after[paths[-1].hash] > before[paths[-1].hash]
        sid = again["session_id"]
        # Its pages stay readable, and complete answers what a complete of a cached push answers.
        page = await kit.call("GET", f"/api/v1/sessions/{sid}/paths?start=0")
        assert page["paths"] == again["paths"] and page["state"] == "completed"
        done = await kit.complete(sid)
        assert done["state"] == "completed" and done["published"] == []
        assert sorted(done["cached"]) == sorted(p.path for p in paths)
        assert sorted(done["roots"]) == sorted([paths[0].path, paths[-1].path])
        status = await kit.call("GET", f"/api/v1/sessions/{sid}")
        assert status["state"] == "completed"


async def test_an_all_cached_open_still_refuses_a_hash_part_of_another_name(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=32, n=3)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        await _publish(kit, paths, paths[-1:])
        # Every path is published, but one names a reference by a published hash part with another name
        # (docs/security.md, rule 5): 409, nothing recorded.
        tricky = paths[0].path.rsplit("-", 1)[0] + "-tricky"
        paths[1].references = sorted({tricky, *(r for r in paths[1].references if r != paths[0].path)})
        answer = await kit.open(paths[1:], paths[-1:], expect=409)
        assert answer["error"] == "path_conflict"
        assert {"path": tricky, "cached": paths[0].path} in answer["conflicts"]
        counts = await table_counts(daemon.dsn)
        assert counts["upload_sessions"] == 1 and counts["session_claims"] == 0


async def test_an_all_cached_open_waits_for_a_sweep_and_does_not_answer_cached_for_what_it_deleted(
    start_daemon, tmp_path: Path
) -> None:
    """GC's sweep locks a path's row FOR UPDATE, checks nothing keeps it, and deletes it: an open that found the
    path published must wait for it, and then ask for the path again instead of completing."""
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=33, n=3)
    root = paths[-1]
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        await _publish(kit, paths, [root])
        sweep = await asyncpg.connect(daemon.dsn)
        try:
            tx = sweep.transaction()
            await tx.start()
            await sweep.execute("SELECT hash FROM store_paths WHERE hash = $1 FOR UPDATE", root.hash)
            opening = asyncio.create_task(kit.open(paths, [root], expect=201))
            await asyncio.sleep(1.5)
            assert not opening.done(), "the open did not wait for the sweep's lock"
            await sweep.execute("DELETE FROM store_paths WHERE hash = $1", root.hash)
            await sweep.execute(
                "UPDATE objects SET state = 'pending', present_at = NULL WHERE key = $1", f"{root.hash}.narinfo"
            )
            await tx.commit()
            answer = await opening
        finally:
            await sweep.close()
        assert "state" not in answer
        status = {e["path"]: e["status"] for e in answer["paths"]}
        assert status == {p.path: "upload" if p is root else "cached" for p in paths}
        reports = await kit.upload(answer, paths)
        done = await kit.complete(answer["session_id"], reports)
        assert done["published"] == [root.path]
