"""How many SQL statements one ``complete`` costs (issue 11 item 6): the daemon's app runs in this process, and
every statement asyncpg sends on any connection is counted while ``complete`` runs. The figure is printed
(``-s``) and held to a ceiling, so that a change that adds round trips is noticed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from niks3d.config import load_config
from niks3d.server.app import create_app
from tests.server.pushkit import PushKit, make_closure

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

# Measured with this test (5 paths, 1 root, every object reported in the complete request): 43 statements
# before issue 11 (one UPDATE per accepted object), 34 after; pool resets on release count too. Claims as
# leases (issue 20) then added one lease renewal per staged object on its own connection, and one for the
# batch: 11 renewals and 11 pool resets; concurrent reports (c5ba28c) one more session load: 57 in all.
# One renewal statement per report (d065b44): 37. The session loaded once per complete outside the
# transactions that lock it (the handler's load, which checks the owner, is the one complete uses), and the
# claims and uploaders asked about only when an object is absent: 33. Then (issue 11 item 6, session 7) the
# report's claims, object states and touch of the session in one statement (-2); its record of the accepted
# objects (lock the session, mark them present, forget their upload ids) one statement instead of a transaction of
# three (-4); publication's name check answering which paths are published (-1); the session's completion and the
# release of its claims one statement (-1): 25; the check of the objects asking which paths are published and
# their objects' states in one statement (-1): 24. The report's NARs' placements taken, so that only one upload of
# a key is put in place at a time while sessions of several identities upload it (+1, issue 20): 25.
CEILING = 25
# One open of 5 paths: 20, then 19 with the name check answering which paths are published, 18 with the objects'
# rows inserted and locked in one statement (db/uploads.py's ensure_and_lock). Then 20: whether every path is
# published already is asked before the open's transaction, on a connection of its own (one statement and its
# pool reset), so that a push of cached paths only never works out the object plan (741d9c4, issue 18).
OPEN_CEILING = 20
_METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval")


class StatementCounter:
    """Counts asyncpg Connection calls (one call = one statement round trip; executemany counts once)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.statements: list[str] = []  # in full, in the order sent
        self.on = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    for name in _METHODS:
        original = getattr(asyncpg.connection.Connection, name)

        def wrapped(self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            if counter.on:
                sql = " ".join(str(args[0] if args else kwargs.get("query", "")).split())
                counter.counts[f"{_name}: {sql[:70]}"] += 1
                counter.statements.append(sql)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, name, wrapped)
    yield counter


async def test_statements_per_complete(make_daemon_config: Any, tmp_path: Path, counter: StatementCounter) -> None:
    daemon = make_daemon_config()
    app = create_app(load_config(daemon.config_path))
    paths = make_closure(tmp_path, seed=77, n=5)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        kit = PushKit(http, str(server.make_url("")).rstrip("/"), daemon.tokens["pusher"])
        counter.on = True
        session = await kit.open(paths, paths[-1:])
        counter.on = False
        opened = counter.total
        print(f"\nSQL statements in one open (5 paths): {opened}")
        for what, n in sorted(counter.counts.items()):
            print(f"  {n:3d}  {what}")
        counter.counts.clear()
        reports = await kit.upload(session, paths)
        counter.on = True
        result = await kit.complete(session["session_id"], reports)
        counter.on = False
    assert len(result["published"]) == 5
    assert opened <= OPEN_CEILING
    print(f"\nSQL statements in one complete (5 paths): {counter.total}")
    for what, n in sorted(counter.counts.items()):
        print(f"  {n:3d}  {what}")
    assert counter.total <= CEILING
