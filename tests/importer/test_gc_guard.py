"""An import killed with SIGKILL leaves objects the database does not track yet; GC must not take them for
orphans. ``niks3d gc`` refuses (exit 1, naming the import) and deletes nothing; the daemon answers
``POST /api/v1/gc`` and ``DELETE /api/v1/paths/..`` with 409 ``import_unfinished`` and ``/metrics`` says so;
``niks3d fsck`` reports ``import_unfinished``, and once the import has been run again to its end GC runs and
keeps every path, and ``/metrics`` shows the finished runs."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import time
from urllib.parse import urlsplit

import asyncpg
import pytest

from niks3d.config import S3Settings
from niks3d.storage import open_bucket
from testkit.synthbucket import write_synth_bucket
from tests.fixtures.daemon import niks3d_argv
from tests.importer.importkit import niks3d, wait_for_paths
from tests.server.bucketview import s3_client
from tests.server.test_metrics import scrape

pytestmark = [pytest.mark.postgres, pytest.mark.s3]
PATHS = 60


async def _fill(s3) -> int:
    settings = S3Settings(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region)
    async with open_bucket(settings, s3.access_key_id, s3.secret_access_key) as bucket:
        return await write_synth_bucket(bucket, PATHS, seed=15)


def _keys(s3) -> set[str]:
    keys: set[str] = set()
    for page in s3_client(s3).get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


async def _rows(dsn: str) -> tuple[int, list[tuple[str, str]], int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM store_paths"),
            [tuple(r) for r in await conn.fetch("SELECT command, state FROM maintenance_runs ORDER BY id")],
            await conn.fetchval("SELECT count(*) FROM gc_runs"),
        )
    finally:
        await conn.close()


def _request(daemon, method: str, target: str, body: object = None) -> tuple[int, dict]:
    """One API request with the collector's token; the status and the JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(daemon.url).port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**daemon.headers("collector"), "Content-Type": "application/json"}
        conn.request(method, target, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _first_path(dsn: str) -> str:
    async def first() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT hash || '-' || name FROM store_paths ORDER BY hash LIMIT 1")
        finally:
            await conn.close()

    return asyncio.run(first())


def _the_api_refuses(served, before: set[str]) -> None:
    """POST /api/v1/gc and DELETE /api/v1/paths/.. answer 409 import_unfinished, naming it; nothing is deleted."""
    status, body = _request(served, "POST", "/api/v1/gc", {"force": True, "older_than": "0s"})
    assert status == 409 and body["error"] == "import_unfinished", body
    assert body["import_run"] == 1, body
    assert body["message"].startswith("niks3d import (run 1, started "), body
    assert "is running, not finished" in body["message"] and "Run niks3d import again" in body["message"], body
    path = _first_path(served.dsn)
    status, body = _request(served, "DELETE", f"/api/v1/paths/{path}?force=1")
    assert status == 409 and body["error"] == "import_unfinished", body
    assert "deleting a path could delete what they need" in body["message"], body
    assert _keys(served.s3) == before


def test_gc_refuses_after_a_killed_import_until_an_import_finishes(make_daemon_config, start_daemon):
    daemon = make_daemon_config()
    asyncio.run(_fill(daemon.s3))
    before = _keys(daemon.s3)

    started = time.time()
    proc = subprocess.Popen(
        niks3d_argv("import", "--batch-size", "2", "--config", str(daemon.config_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_paths(daemon.dsn, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    registered, runs, _ = asyncio.run(_rows(daemon.dsn))
    assert 6 <= registered < PATHS, f"the import was not killed in the middle: {registered} paths registered"
    assert runs == [("import", "running")]

    served = start_daemon(daemon)
    assert _keys(daemon.s3) == before | {"nix-cache-info"}  # the daemon writes it when it starts
    before |= {"nix-cache-info"}
    _the_api_refuses(served, before)
    m = scrape(served)
    assert m["niks3d_import_unfinished"][()] == 1
    # the killed run's row still says running, but nothing holds the collector's lock
    assert m["niks3d_maintenance_running"] == {(("command", "fsck"),): 0, (("command", "import"),): 0}
    assert (("command", "import"),) in m["niks3d_maintenance_last_run_start_timestamp_seconds"]
    assert "niks3d_maintenance_last_finished_timestamp_seconds" not in m
    assert "niks3d_import_last_paths_registered" not in m
    served.stop()

    code, report, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 1 and report is None, out
    assert "niks3d import (run 1" in out and "is running, not finished" in out, out
    assert "Traceback" not in out, out
    assert _keys(daemon.s3) == before
    assert asyncio.run(_rows(daemon.dsn))[2] == 0  # no gc run was even recorded

    code, report, out = niks3d(daemon.config_path, "fsck")
    assert code == 2 and report is not None, out
    assert report["problems_by_kind"]["import_unfinished"] == 1, report["problems_by_kind"]
    fsck_problems = sum(report["problems_by_kind"].values())  # the unregistered paths' objects are untracked
    assert asyncio.run(_rows(daemon.dsn))[1] == [("import", "interrupted"), ("fsck", "finished")]
    code, _, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 1 and "is interrupted, not finished" in out, out

    code, report, out = niks3d(daemon.config_path, "import", "--batch-size", "50")
    assert code == 0 and report is not None, out
    assert report["counts"]["paths_registered"] == PATHS - registered
    rerun = PATHS - registered
    code, report, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 0 and report is not None and report["state"] == "finished", out
    registered, runs, gc_runs = asyncio.run(_rows(daemon.dsn))
    assert (registered, gc_runs) == (PATHS, 1)
    assert runs[-1] == ("import", "finished")
    assert _keys(daemon.s3) == before

    served = start_daemon(daemon)
    m = scrape(served)
    assert m["niks3d_import_unfinished"][()] == 0
    assert m["niks3d_import_last_paths_registered"][()] == rerun
    assert m["niks3d_maintenance_last_problems"] == {
        (("command", "fsck"),): fsck_problems,
        (("command", "import"),): 0,
    }
    ends = m["niks3d_maintenance_last_finished_timestamp_seconds"]
    assert set(ends) == {(("command", "fsck"),), (("command", "import"),)}
    assert all(started - 1 < end <= time.time() + 1 for end in ends.values()), (started, ends)
    status, body = _request(served, "POST", "/api/v1/gc", {"dry_run": True})
    assert status == 202 and body["state"] == "running", body
