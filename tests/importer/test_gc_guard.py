"""An import killed with SIGKILL leaves objects the database does not track yet; GC must not take them for
orphans. ``niks3d gc`` refuses (exit 1, naming the import) and deletes nothing, ``niks3d fsck`` reports
``import_unfinished``, and once the import has been run again to its end GC runs and keeps every path."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import asyncpg
import pytest

from niks3d.config import S3Settings
from niks3d.storage import open_bucket
from testkit.synthbucket import write_synth_bucket
from tests.fixtures.daemon import niks3d_argv
from tests.importer.importkit import niks3d, wait_for_paths
from tests.server.bucketview import s3_client

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


def test_gc_refuses_after_a_killed_import_until_an_import_finishes(make_daemon_config):
    daemon = make_daemon_config()
    asyncio.run(_fill(daemon.s3))
    before = _keys(daemon.s3)

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

    code, report, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 1 and report is None, out
    assert "niks3d import (run 1" in out and "is running, not finished" in out, out
    assert "Traceback" not in out, out
    assert _keys(daemon.s3) == before
    assert asyncio.run(_rows(daemon.dsn))[2] == 0  # no gc run was even recorded

    code, report, out = niks3d(daemon.config_path, "fsck")
    assert code == 2 and report is not None, out
    assert report["problems_by_kind"]["import_unfinished"] == 1, report["problems_by_kind"]
    assert asyncio.run(_rows(daemon.dsn))[1] == [("import", "interrupted"), ("fsck", "finished")]
    code, _, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 1 and "is interrupted, not finished" in out, out

    code, report, out = niks3d(daemon.config_path, "import", "--batch-size", "50")
    assert code == 0 and report is not None, out
    assert report["counts"]["paths_registered"] == PATHS - registered
    code, report, out = niks3d(daemon.config_path, "gc", "--force")
    assert code == 0 and report is not None and report["state"] == "finished", out
    registered, runs, gc_runs = asyncio.run(_rows(daemon.dsn))
    assert (registered, gc_runs) == (PATHS, 1)
    assert runs[-1] == ("import", "finished")
    assert _keys(daemon.s3) == before
