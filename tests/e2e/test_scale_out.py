"""Scale-out (issue 20): two real daemon processes against one PostgreSQL database and one bucket, as operators who
outgrow one machine run them behind one name.

What one daemon does the other sees at once (its narinfo and miss caches are invalidated through PostgreSQL
NOTIFY, docs/proxy.md); a session completed through both at once is published once; a path deleted through both
at once is deleted once; garbage-collection runs started through both at once never overlap; and a daemon
killed mid-push leaves the other serving, with the push resumed and completed through it.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import tomli_w

from niks3d.devenv.process import free_port
from tests.fixtures.daemon import Daemon
from tests.server.bucketview import get_object
from tests.server.pushkit import FakePath, PushKit, make_closure, make_path

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def _twin(daemon: Daemon, tmp_path: Path) -> Daemon:
    """A second daemon with the first one's database, bucket, keys and tokens, on its own port."""
    settings = copy.deepcopy(daemon.settings)
    port = free_port()
    settings["server"]["listen"] = [f"127.0.0.1:{port}"]
    config_path = tmp_path / "niks3d-twin.toml"
    config_path.write_text(tomli_w.dumps(settings))
    return dataclasses.replace(
        daemon, url=f"http://127.0.0.1:{port}", config_path=config_path, settings=settings, process=None
    )


async def _narinfo(http: aiohttp.ClientSession, daemon: Daemon, path: FakePath) -> int:
    async with http.get(f"{daemon.url}/{path.hash}.narinfo") as r:
        await r.read()
        return r.status


async def _becomes(http: aiohttp.ClientSession, daemon: Daemon, path: FakePath, status: int) -> None:
    """The daemon answers ``status`` for the path's narinfo, within a bounded number of tries (NOTIFY is
    asynchronous; without it the caches would answer the old status for their whole TTL)."""
    seen = None
    for _ in range(50):
        seen = await _narinfo(http, daemon, path)
        if seen == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{daemon.url} still answers {seen} for {path.path}, not {status}")


async def _call(
    http: aiohttp.ClientSession, daemon: Daemon, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, daemon.url + path, json=body, headers=daemon.headers(token)) as r:
        return r.status, await r.json()


async def test_two_daemons_share_the_cache_and_never_double_publish_delete_or_collect(
    start_daemon, tmp_path: Path
) -> None:
    a = start_daemon()
    b = start_daemon(_twin(a, tmp_path))
    closure = make_closure(tmp_path, seed=20, n=3)
    top = closure[-1]
    async with aiohttp.ClientSession() as http:
        kit_a = PushKit(http, a.url, a.tokens["pusher"])
        kit_b = PushKit(http, b.url, b.tokens["pusher"])

        # A miss cached by b, then a push through a: b serves the path at once.
        assert await _narinfo(http, b, top) == 404
        assert await _narinfo(http, a, top) == 404
        await kit_a.push(closure, [top])
        await _becomes(http, b, top, 200)
        assert await _narinfo(http, a, top) == 200  # now in a's narinfo cache too

        # One session completed through both daemons at once: published once, the same answer twice.
        rng = random.Random(21)
        app = make_path(tmp_path, rng, "app", references=[top.path])
        session = await kit_a.open([app], [app])
        reports = await kit_a.upload(session, [app])
        answers = await asyncio.gather(
            kit_a.complete(session["session_id"], reports), kit_b.complete(session["session_id"], reports)
        )
        assert answers[0] == answers[1] and answers[0]["published"] == [app.path]
        conn = await asyncpg.connect(a.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM store_paths WHERE hash = $1", app.hash) == 1
        finally:
            await conn.close()
        await _becomes(http, b, app, 200)

        # A path deleted through both at once: deleted once; the other is refused (the collector's lock) or finds
        # it gone. Both daemons forget its narinfo.
        basename = app.path.removeprefix("/nix/store/")
        deletes = await asyncio.gather(
            *(_call(http, d, "DELETE", f"/api/v1/paths/{basename}", "admin") for d in (a, b))
        )
        statuses = sorted(s for s, _ in deletes)
        assert statuses.count(200) == 1 and set(statuses) <= {200, 404, 409}, deletes
        for _, body in deletes:
            assert body.get("error") in (None, "path_not_found", "gc_running"), body
        await _becomes(http, a, app, 404)
        await _becomes(http, b, app, 404)

        # Garbage-collection runs started through both at once, twice: never two at once, and each run is
        # seen through both daemons.
        run_ids: list[int] = []
        for _ in range(2):
            started = await asyncio.gather(
                *(_call(http, d, "POST", "/api/v1/gc", "admin", {"grace_period": "0s"}) for d in (a, b))
            )
            for status, body in started:
                assert status in (202, 409), body
                if status == 202:
                    run_ids.append(body["run_id"])
                else:
                    assert body["error"] == "gc_running", body
            for run_id in run_ids:
                for _ in range(100):
                    seen = [await _call(http, d, "GET", f"/api/v1/gc/{run_id}", "admin") for d in (a, b)]
                    assert all(s == 200 for s, _ in seen) and seen[0][1]["run_id"] == seen[1][1]["run_id"]
                    if all(body["state"] != "running" for _, body in seen):
                        break
                    await asyncio.sleep(0.1)
                assert seen[0][1]["state"] == seen[1][1]["state"] == "finished", seen
        conn = await asyncpg.connect(a.dsn)
        try:
            runs = await conn.fetch("SELECT id, started_at, finished_at FROM gc_runs ORDER BY started_at")
        finally:
            await conn.close()
        assert {r["id"] for r in runs} >= set(run_ids) and run_ids
        for earlier, later in itertools.pairwise(runs):
            assert earlier["finished_at"] <= later["started_at"], f"GC runs {earlier['id']} and {later['id']} overlap"
        # The closure pushed first is within its retention: every collection kept it.
        await _becomes(http, b, top, 200)

        # a is killed mid-push; b keeps serving, and the push is resumed (same idempotency key) through b.
        big = make_closure(tmp_path, seed=22, n=4)
        opened = await kit_a.open(big, big[-1:], key="resume-me")
        half = {"session_id": opened["session_id"], "paths": opened["paths"][:2]}
        reported = await kit_a.upload(half, big)
        await kit_a.call("POST", f"/api/v1/sessions/{opened['session_id']}/objects", {"objects": reported})
        a.stop(signal.SIGKILL)
        assert await _narinfo(http, b, top) == 200
        again = await kit_b.open(big, big[-1:], key="resume-me")
        assert again["session_id"] == opened["session_id"]
        for entry in again["paths"][:2]:
            assert all(o["action"] == "none" for o in entry["objects"]), entry  # the reported half is kept
        rest = await kit_b.upload(again, big)
        done = await kit_b.complete(again["session_id"], rest)
        assert sorted(done["published"]) == sorted(p.path for p in big)
        for p in big:
            assert await _narinfo(http, b, p) == 200
        async with http.get(f"{b.url}/{big[-1].hash}.narinfo") as r:
            url = next(line.split(": ", 1)[1] for line in (await r.text()).splitlines() if line.startswith("URL: "))
        assert get_object(b.s3, url)[0] == big[-1].compressed
