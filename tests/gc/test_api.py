"""Garbage collection through the real daemon's API and ``niks3d gc``: start and follow runs, one at a time,
refuse bad requests, delete a store path on request (and the read proxy forgets it at once)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from niks3d.db.gc.runs import GC_LOCK_KEY
from tests.fixtures.daemon import niks3d_argv
from tests.server.bucketview import bucket_keys
from tests.server.pushkit import PushKit, make_closure
from tests.server.test_socket_activation import NotifyListener

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


async def _follow(kit: PushKit, run_id: int) -> dict[str, Any]:
    for _ in range(600):
        run: dict[str, Any] = await kit.call("GET", f"/api/v1/gc/{run_id}")
        if run["state"] != "running":
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"gc run {run_id} did not finish within a minute")


def _niks3d_gc(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(niks3d_argv("gc", "-c", str(config), *args), capture_output=True, text=True, check=False)


async def _hold_lock(dsn: str) -> tuple[asyncpg.Connection, int]:
    """Play a run of another process: hold the lock and a running row."""
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY)
    run_id = await conn.fetchval(
        """INSERT INTO gc_runs (state, phase, params, dry_run, forced, owner)
           VALUES ('running', 'mark', '{}', false, false, 'elsewhere:42') RETURNING id"""
    )
    return conn, run_id


async def test_runs_start_at_once_are_followed_and_listed(daemon: Any, tmp_path: Path) -> None:
    paths = make_closure(tmp_path, seed=30, n=3)
    async with aiohttp.ClientSession() as http:
        pusher = PushKit(http, daemon.url, daemon.tokens["pusher"])
        collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        reader = PushKit(http, daemon.url, daemon.tokens["reader"])
        await pusher.push(paths)
        body = await pusher.call("POST", "/api/v1/gc", {}, expect=403)
        assert "needs gc" in body["message"]
        started = await collector.call("POST", "/api/v1/gc", {"older_than": 0, "force": True}, expect=202)
        run = await _follow(reader, started["run_id"])
        assert run["state"] == "finished" and run["forced"] and run["params"]["older_than"] == 0
        assert run["counts"]["paths_deleted"] == 3 and run["counts"]["roots_expired"] == 1
        assert run["bytes_freed"] > 0 and run["finished_at"] is not None
        assert bucket_keys(daemon.s3) == {"nix-cache-info"}
        dry = await collector.call("POST", "/api/v1/gc", {"dry_run": True, "grace_period": "2h"}, expect=202)
        assert (await _follow(reader, dry["run_id"]))["dry_run"]
        listed = await reader.call("GET", "/api/v1/gc?limit=5")
        assert [r["run_id"] for r in listed["runs"]] == [dry["run_id"], started["run_id"]]
        assert (await reader.call("GET", "/api/v1/gc/999", expect=404))["error"] == "run_not_found"
        assert (await reader.call("GET", "/api/v1/gc/abc", expect=404))["error"] == "run_not_found"


async def test_a_second_run_is_refused_naming_the_active_one(daemon: Any) -> None:
    conn, run_id = await _hold_lock(daemon.dsn)
    try:
        async with aiohttp.ClientSession() as http:
            collector = PushKit(http, daemon.url, daemon.tokens["collector"])
            body = await collector.call("POST", "/api/v1/gc", None, expect=409)
            assert body["error"] == "gc_running" and body["run_id"] == run_id and body["since"]
            assert f"run {run_id} is already running" in body["message"] and "elsewhere:42" in body["message"]
            result = await asyncio.to_thread(_niks3d_gc, daemon.config_path)
            assert result.returncode == 1
            assert f"niks3d: error: garbage collection run {run_id} is already running since" in result.stderr
    finally:
        await conn.close()  # the other process dies: the next run marks its row interrupted
    result = await asyncio.to_thread(_niks3d_gc, daemon.config_path, "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["state"] == "finished" and run["run_id"] == run_id + 1
    conn = await asyncpg.connect(daemon.dsn)
    try:
        assert await conn.fetchval("SELECT state FROM gc_runs WHERE id = $1", run_id) == "interrupted"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"older_than": "forever"}, "older_than: 'forever' is not a duration"),
        ({"force": "yes"}, "force: must be true or false"),
        ({"verbose": True}, "unknown field(s) 'verbose'"),
        ([1], "the body must be a JSON object"),
    ],
)
async def test_bad_gc_requests_are_refused_and_start_nothing(daemon: Any, body: Any, message: str) -> None:
    async with aiohttp.ClientSession() as http:
        collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        answer = await collector.call("POST", "/api/v1/gc", body, expect=400)
        assert message in answer["message"]
        assert (await collector.call("GET", "/api/v1/gc"))["runs"] == []


async def test_deleting_a_pushed_secret_removes_it_everywhere_at_once(daemon: Any, tmp_path: Path) -> None:
    dep, secret, app = make_closure(tmp_path, seed=31, n=3)  # app refers to secret refers to dep
    async with aiohttp.ClientSession() as http:
        pusher = PushKit(http, daemon.url, daemon.tokens["pusher"])
        collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        pinner = PushKit(http, daemon.url, daemon.tokens["pinner"])
        await pusher.push([dep, secret, app])
        await pinner.call("PUT", "/api/v1/pins/release", {"path": app.path})
        async with http.get(f"{daemon.url}/{secret.hash}.narinfo") as r:  # the read proxy caches it now
            assert r.status == 200
        refused = await collector.call("DELETE", f"/api/v1/paths/{secret.hash}", expect=409)
        assert refused["error"] == "path_in_use" and refused["referrers"] == [app.path]
        assert (await pusher.call("DELETE", f"/api/v1/paths/{secret.hash}", expect=403))["error"] == "forbidden"
        assert (await collector.call("DELETE", "/api/v1/paths/" + "0" * 32, expect=404))["error"] == "path_not_found"
        wrong = secret.path.rsplit("-", 1)[0] + "-other"
        assert (await collector.call("DELETE", f"/api/v1/paths{wrong}", expect=404))["error"] == "path_not_found"
        encoded = "/api/v1/paths/" + quote(wrong, safe="")
        assert (await collector.call("DELETE", encoded, expect=404))["error"] == "path_not_found"
        bad = await collector.call("DELETE", f"/api/v1/paths/{secret.hash}?force=maybe", expect=400)
        assert "force" in bad["message"]
        done = await collector.call("DELETE", f"/api/v1/paths{secret.path}?force=1")
        assert sorted(done["deleted"]) == sorted([secret.path, app.path]) and done["kept"] == []
        async with http.get(f"{daemon.url}/{secret.hash}.narinfo") as r:
            assert r.status == 404
        assert (await pinner.call("GET", "/api/v1/pins"))["pins"] == []
    keys = bucket_keys(daemon.s3)
    assert f"{dep.hash}.narinfo" in keys
    assert not {k for k in keys if k.startswith((secret.hash, app.hash))}


async def test_a_run_started_over_the_api_leaves_the_daemons_status_line_alone(
    make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        daemon = make_daemon_config()
        daemon.extra_env["NOTIFY_SOCKET"] = str(notify.path)
        start_daemon(daemon)
        serving = [m for m in notify.wait_for("READY=1", 30) if m.startswith("STATUS=serving")]
        serving += [m for m in notify.read(0.5) if m.startswith("STATUS=serving")]
        assert serving, notify.messages
        async with aiohttp.ClientSession() as http:
            collector = PushKit(http, daemon.url, daemon.tokens["collector"])
            started = await collector.call("POST", "/api/v1/gc", {"dry_run": True}, expect=202)
            assert (await _follow(collector, started["run_id"]))["state"] == "finished"
        notify.read(1.0)
        # The run's progress is in gc_runs and the log; systemctl status keeps saying what the daemon does.
        statuses = [line for m in notify.messages for line in m.split("\n") if line.startswith("STATUS=")]
        assert statuses[-1].startswith("STATUS=serving on"), statuses
        assert not [s for s in statuses if "gc run" in s], statuses
    finally:
        notify.sock.close()
