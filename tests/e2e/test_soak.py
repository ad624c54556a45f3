"""A bounded soak (issue 20): 20 concurrent pushes of overlapping closures, narinfo hits and misses and NAR reads
through the real daemon for ``NIKS3_SOAK_SECONDS`` (default 8), then every pushed closure checked as Nix reads
it. No 5xx, no failed push, no ERROR in the daemon's log. bench/soak.py runs the same for longer and prints the
figures (RSS over time, the longest answers)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

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
    assert soak.statuses["push 200"] >= 20, soak.statuses
    assert soak.failures() == 0, soak.statuses
    assert not problems, problems[:10]
    errors = [line for line in daemon.log().splitlines() if line.startswith("ERROR")]
    assert not errors, errors[:5]
