"""``niks3d import`` killed with SIGKILL at random points (seeded) and run again: the end result equals an
uninterrupted run's, and between kills the database never claims more than the bucket holds (every registered
path has its objects present and its references registered: whole batches or nothing).

``NIKS3_STRESS_TRIALS`` (default 3) kills, ``NIKS3_STRESS_SEED`` to replay."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import time

import asyncpg
import pytest

from niks3d.config import S3Settings
from niks3d.storage import open_bucket
from testkit.synthbucket import write_synth_bucket
from tests.fixtures.daemon import niks3d_argv
from tests.importer.importkit import TABLES, niks3d, snapshot, wait_for_paths

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]
TRIALS = int(os.environ.get("NIKS3_STRESS_TRIALS") or 3)
SEED = int(os.environ.get("NIKS3_STRESS_SEED") or secrets.randbits(32))
PATHS = 300
TABLES_AND_ROOTS = {**TABLES, "roots": "SELECT hash FROM roots"}


async def _fill(s3) -> int:
    settings = S3Settings(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region)
    async with open_bucket(settings, s3.access_key_id, s3.secret_access_key) as bucket:
        return await write_synth_bucket(bucket, PATHS, seed=SEED)


async def _reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


async def _consistent(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        broken = await conn.fetchval(
            """SELECT count(*) FROM store_paths s
               WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = s.nar_key AND o.state = 'present')
                  OR NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = s.narinfo_key AND o.state = 'present')
                  OR NOT EXISTS (SELECT 1 FROM roots r WHERE r.hash = s.hash)"""
        )
        assert broken == 0, f"{broken} registered paths lack an object or their root (seed {SEED})"
        count: int = await conn.fetchval("SELECT count(*) FROM store_paths")
        return count
    finally:
        await conn.close()


def test_an_import_killed_at_random_points_then_run_again_equals_an_uninterrupted_one(make_daemon_config):
    daemon = make_daemon_config()
    asyncio.run(_fill(daemon.s3))
    args = ["import", "--batch-size", "10"]
    started = time.monotonic()
    code, report, out = niks3d(daemon.config_path, *args)
    took = time.monotonic() - started
    assert code == 0 and report is not None and report["counts"]["paths_registered"] == PATHS, out
    want = asyncio.run(snapshot(daemon.dsn, TABLES_AND_ROOTS))
    print(f"seed {SEED}: an uninterrupted import took {took:.1f} s ({report['counts']['levels']} levels)")

    asyncio.run(_reset(daemon.dsn))
    rng = random.Random(SEED)
    seen = []
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            niks3d_argv(*args, "--config", str(daemon.config_path)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if trial % 2 == 0:  # at a random moment
            time.sleep(rng.uniform(0.2, took))
        else:  # in the middle of registration: once a random number of paths is in
            wait_for_paths(daemon.dsn, rng.randrange(1, PATHS), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(asyncio.run(_consistent(daemon.dsn)) if _migrated(daemon.dsn) else 0)
    print(f"paths registered when killed: {seen}")
    code, report, out = niks3d(daemon.config_path, *args)
    assert code == 0 and report is not None, out
    assert asyncio.run(snapshot(daemon.dsn, TABLES_AND_ROOTS)) == want, f"seed {SEED}, kills {seen}"
    code, report, out = niks3d(daemon.config_path, *args)
    assert code == 0 and report is not None and report["counts"]["paths_registered"] == 0, out
    assert asyncio.run(snapshot(daemon.dsn, TABLES_AND_ROOTS)) == want


def _migrated(dsn: str) -> bool:
    async def check() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return bool(await conn.fetchval("SELECT to_regclass('public.store_paths') IS NOT NULL"))
        finally:
            await conn.close()

    return asyncio.run(check())
