"""A bounded soak (issue 20): 20 concurrent pushes of overlapping closures, narinfo hits and misses and NAR reads
through the real daemon for ``NIKS3_SOAK_SECONDS`` (default 8), then every pushed closure checked as Nix reads
it and the bucket checked against the database (``cache_problems``: niks3d fsck, and every narinfo's NAR in the
listing with its size). No 5xx, no failed push, no ERROR in the daemon's log. bench/soak.py runs the same for
longer and prints the figures (RSS over time, the longest answers)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import aiohttp
import pytest

from niks3d.nix.bucketkeys import nar_key
from tests.e2e.gcchecks import cache_problems
from tests.server.bucketview import s3_client
from tests.server.proxykit import push
from tests.server.pushkit import make_closure, random_hash
from tests.server.soakkit import Soak

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("NIKS3_SOAK_SECONDS", "8"))


async def test_a_soak_of_pushes_and_reads_gives_no_5xx_and_a_consistent_cache(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    soak = Soak(daemon.url, daemon.tokens["pusher"], tmp_path, seed=20)
    soak.build_library(40)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as http:
        tasks = [asyncio.create_task(soak.pusher(http, n)) for n in range(20)]
        tasks += [asyncio.create_task(soak.reader(http, n)) for n in range(4)]
        await asyncio.sleep(SOAK_SECONDS)
        soak.stop = True
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            assert result is None, result
        problems = await soak.check(http)
    problems += await cache_problems(daemon.config_path)
    assert soak.statuses["push 200"] >= 20, soak.statuses
    assert soak.failures() == 0, soak.statuses
    assert not problems, problems[:10]
    errors = [line for line in daemon.log().splitlines() if line.startswith("ERROR")]
    assert not errors, errors[:5]


async def test_the_end_check_sees_a_lost_nar_and_an_untracked_object(start_daemon, tmp_path: Path) -> None:
    """The twin of the soak's end check: it finds what it is there to find."""
    daemon = start_daemon()
    closure = make_closure(tmp_path, seed=21, n=3)
    await push(daemon, closure)
    assert await cache_problems(daemon.config_path) == []

    client = s3_client(daemon.s3)
    lost = nar_key(closure[0].nar_hash, "zstd")
    client.delete_object(Bucket=daemon.s3.bucket, Key=lost)
    stray = f"{random_hash(random.Random(22))}.ls"
    client.put_object(Bucket=daemon.s3.bucket, Key=stray, Body=b"{}")
    problems = await cache_problems(daemon.config_path)
    assert any(p.startswith(f"fsck nar_missing {lost}") for p in problems), problems
    assert any(p.startswith(f"fsck untracked {stray}") for p in problems), problems
    assert any(f"names {lost}, which is not in the bucket" in p for p in problems), problems
