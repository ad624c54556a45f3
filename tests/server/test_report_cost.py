"""What one object report costs the database (issue 18): a constant number of statements and pool connections,
however many objects it carries.

Before, every staged object of a report renewed its lease in a statement of its own, on a pool connection of
its own. A 3,000-path push on a loaded machine then got 503 on every report: with thousands of objects in a
report, one of those acquisitions was bound to outwait the pool's ``acquire_timeout``, the whole report failed,
and the client sent it again with more objects. The daemon's app runs in this process, and every statement
asyncpg sends (pool resets on release included) is counted while a report runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from niks3d.config import load_config
from niks3d.server.app import create_app
from tests.server.pushkit import PushKit, make_closure
from tests.server.test_complete_statements import StatementCounter, counter

pytestmark = [pytest.mark.postgres, pytest.mark.s3]
# Measured: 14 statements a report (pool resets included) before issue 11 item 6's session-7 work, then 8: the
# claims, states and touch in one statement, and the record of the accepted objects in one instead of a
# transaction of three (tests/server/test_complete_statements.py has the same steps for complete).
# Then 9 with the NARs' placements taken (db/uploads.py begin_placing, on the renewal's connection; issue 20).
REPORT_CEILING = 9
__all__ = ["counter"]  # the fixture, shared with the complete test


async def test_a_report_costs_the_same_statements_for_2_objects_as_for_20(
    make_daemon_config: Any, tmp_path: Path, counter: StatementCounter
) -> None:
    # a pool smaller than a report, with little patience: one connection per object would not do
    daemon = make_daemon_config(database={"pool_max_size": 2, "acquire_timeout": 2.0})
    app = create_app(load_config(daemon.config_path))
    paths = make_closure(tmp_path, seed=78, n=22)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        kit = PushKit(http, str(server.make_url("")).rstrip("/"), daemon.tokens["pusher"])
        session = await kit.open(paths, paths[-1:])
        sid = session["session_id"]
        reports = await kit.upload(session, paths)
        keys = sorted(reports)
        assert len(keys) == 22  # a NAR per path (no listing is uploaded: niks3d writes them)
        figures = []
        for batch in (keys[:2], keys[2:]):
            counter.counts.clear()
            counter.on = True
            answer = await kit.call(
                "POST", f"/api/v1/sessions/{sid}/objects", {"objects": {k: reports[k] for k in batch}}
            )
            counter.on = False
            assert answer == {"accepted": sorted(batch), "missing": []}
            figures.append(counter.total)
            print(f"\nSQL statements in one report of {len(batch)} objects: {counter.total}")
            for what, n in sorted(counter.counts.items()):
                print(f"  {n:3d}  {what}")
        result = await kit.complete(sid, {})
    assert len(result["published"]) == 22
    assert figures[0] == figures[1]
    assert figures[0] <= REPORT_CEILING


async def test_a_report_renews_every_lease_of_its_session_in_one_statement(
    make_daemon_config: Any, tmp_path: Path, counter: StatementCounter
) -> None:
    """Staged objects found are progress of the whole session: one statement renews the leases of the objects
    reported and of those still to upload (before, one for the reported objects and one more when they were
    accepted)."""
    daemon = make_daemon_config()
    app = create_app(load_config(daemon.config_path))
    paths = make_closure(tmp_path, seed=79, n=3)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        kit = PushKit(http, str(server.make_url("")).rstrip("/"), daemon.tokens["pusher"])
        session = await kit.open(paths, paths[-1:])
        sid = session["session_id"]
        reports = await kit.upload(session, paths)
        reported = sorted(reports)[:2]
        conn = await asyncpg.connect(daemon.dsn)
        try:
            await conn.execute(
                "UPDATE session_claims SET lease_until = now() - interval '1 s' WHERE session_id = $1 AND uploader",
                sid,
            )
            counter.on = True
            answer = await kit.call(
                "POST", f"/api/v1/sessions/{sid}/objects", {"objects": {k: reports[k] for k in reported}}
            )
            counter.on = False
            assert answer == {"accepted": reported, "missing": []}
            lapsed = await conn.fetch(
                "SELECT key FROM session_claims WHERE session_id = $1 AND uploader AND lease_until <= now()", sid
            )
        finally:
            await conn.close()
        assert [r["key"] for r in lapsed if r["key"] not in reported] == []  # the objects still to upload too
        renewals = [sql for sql in counter.statements if "SET lease_until =" in sql]
        assert len(renewals) == 1, renewals
        result = await kit.complete(sid, {k: reports[k] for k in reports if k not in reported})
    assert len(result["published"]) == 3
