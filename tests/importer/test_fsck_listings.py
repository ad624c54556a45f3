"""``niks3d fsck --listings`` (issue 12's leftover, docs/security.md rule 8): listings published before niks3d
wrote them itself, or registered by ``niks3d import``, may lie; the option derives each one from its path's NAR,
reports a lie by kind, and ``--repair`` writes the NAR's own listing over it.

Real daemon, PostgreSQL and SeaweedFS; the lies are planted in the bucket directly, as a writer of the old days
or another tool would have left them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import aiohttp

from niks3d.cli.oneshot import open_stores
from niks3d.config import load_config
from niks3d.fsck import FsckParams, run_fsck
from niks3d.importer.problems import Report
from niks3d.nix.listing import parse_listing, render_listing
from tests.server.bucketview import get_object, s3_client
from tests.server.pushkit import PushKit, make_closure


async def _fsck(config_path: Path, **params: bool) -> Report:
    config = load_config(config_path)
    async with open_stores(config) as (pool, bucket):
        return await run_fsck(pool, bucket, FsckParams(**params))


def _problems(report: Report) -> dict[tuple[str, str], str]:
    return {(p.kind, p.key): p.detail for p in report.problems}


async def test_fsck_listings_finds_each_lie_by_kind_and_repairs_it(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=61, n=3)
    async with aiohttp.ClientSession() as http:
        await PushKit(http, daemon.url, daemon.tokens["pusher"]).push(paths)
    keys = [f"{p.hash}.ls" for p in paths]
    genuine = [get_object(daemon.s3, key)[0] for key in keys]

    # Path 0: an entry its NAR does not have and a file of another size; path 1: not a listing at all; path 2:
    # the same tree in another rendering (spaces, other key order), which is no lie.
    lie = copy.deepcopy(parse_listing(genuine[0]))
    lie["entries"]["evil"] = {"type": "regular", "size": 6}
    lie["entries"]["bin"]["entries"]["p0"]["size"] += 1
    client = s3_client(daemon.s3)
    client.put_object(Bucket=daemon.s3.bucket, Key=keys[0], Body=render_listing(lie))
    client.put_object(Bucket=daemon.s3.bucket, Key=keys[1], Body=b"{not a listing")
    spaced = json.dumps({"root": json.loads(genuine[2])["root"], "version": 1}, indent=1).encode()
    assert parse_listing(spaced) == parse_listing(genuine[2]) and spaced != genuine[2]
    client.put_object(Bucket=daemon.s3.bucket, Key=keys[2], Body=spaced)

    plain = _problems(await _fsck(daemon.config_path))
    assert not [k for k, _ in plain if k.startswith("listing_")], plain  # only with --listings: it reads the NARs

    found = await _fsck(daemon.config_path, listings=True)
    problems = _problems(found)
    assert found.counts["listings_checked"] == 3
    listing_problems = {k: d for k, d in problems.items() if k[0].startswith("listing_")}
    assert set(listing_problems) == {("listing_differs", keys[0]), ("listing_invalid", keys[1])}, problems
    detail = listing_problems[("listing_differs", keys[0])]
    assert "entry the NAR does not have (/evil)" in detail and "size (/bin/p0)" in detail, detail

    # (the other rendering has another size, which plain fsck reports as file_size: put the original back)
    client.put_object(Bucket=daemon.s3.bucket, Key=keys[2], Body=genuine[2])
    repaired = await _fsck(daemon.config_path, listings=True, repair=True)
    assert repaired.counts["repaired"] >= 2
    again = await _fsck(daemon.config_path, listings=True)
    assert again.problems == [], _problems(again)
    assert [get_object(daemon.s3, key)[0] for key in keys[:2]] == genuine[:2]
