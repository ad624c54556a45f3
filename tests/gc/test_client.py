"""`niks3 gc` and `niks3 delete` against the real daemon: start and follow a run, refuse clearly while another is
active, detach and follow later, delete a path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from niks3d.client.main import main
from niks3d.db.gc.runs import GC_LOCK_KEY
from tests.server.bucketview import bucket_keys
from tests.server.pushkit import PushKit, make_closure

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def _niks3(daemon: Any, tmp_path: Path, capsys: Any, *args: str, token: str = "collector") -> tuple[int, str, str]:
    path = tmp_path / f"token-{token}"
    path.write_text(daemon.tokens[token] + "\n")
    path.chmod(0o600)
    code = main([*args, "--server", daemon.url, "--token-file", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


async def _push(daemon: Any, paths: list[Any]) -> None:
    async with aiohttp.ClientSession() as http:
        await PushKit(http, daemon.url, daemon.tokens["pusher"]).push(paths)


def test_niks3_gc_starts_follows_and_summarizes_a_run(daemon: Any, tmp_path: Path, capsys: Any) -> None:
    paths = make_closure(tmp_path, seed=50, n=3)
    asyncio.run(_push(daemon, paths))
    code, out, err = _niks3(daemon, tmp_path, capsys, "gc", "--dry-run", "--older-than", "0s", "--force", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["dry_run"] and run["counts"]["paths_deleted"] == 3
    assert f"gc run {run['run_id']} finished (dry run): would delete 3 paths and 9 objects" in err
    assert len(bucket_keys(daemon.s3)) == 10  # nothing went
    code, out, err = _niks3(daemon, tmp_path, capsys, "gc", "--older-than", "0s", "--force", "--detach")
    assert code == 0, err
    run_id = int(out)
    code, out, err = _niks3(daemon, tmp_path, capsys, "gc", "--run", str(run_id))
    assert code == 0, err
    assert f"gc run {run_id} finished: deleted 3 paths and 9 objects" in err
    assert bucket_keys(daemon.s3) == {"nix-cache-info"}
    code, _, err = _niks3(daemon, tmp_path, capsys, "gc", token="pusher")
    assert code == 1 and "lacks the 'gc' scope" in err


def test_niks3_gc_says_clearly_that_a_run_is_active(daemon: Any, tmp_path: Path, capsys: Any) -> None:
    async def hold() -> tuple[asyncpg.Connection, int]:
        conn = await asyncpg.connect(daemon.dsn)
        await conn.execute("SELECT pg_advisory_lock($1)", GC_LOCK_KEY)
        run_id = await conn.fetchval(
            """INSERT INTO gc_runs (state, phase, params, dry_run, forced, owner)
               VALUES ('running', 'objects', '{}', false, false, 'other:7') RETURNING id"""
        )
        return conn, run_id

    loop = asyncio.new_event_loop()
    try:
        conn, run_id = loop.run_until_complete(hold())
        code, _, err = _niks3(daemon, tmp_path, capsys, "gc")
        assert code == 1
        assert f"garbage collection run {run_id} is already running since" in err
        assert f"follow it with: niks3 gc --run {run_id}" in err
        loop.run_until_complete(conn.close())
    finally:
        loop.close()


def test_niks3_delete_removes_a_path_and_what_references_it(daemon: Any, tmp_path: Path, capsys: Any) -> None:
    dep, secret, app = make_closure(tmp_path, seed=51, n=3)
    asyncio.run(_push(daemon, [dep, secret, app]))
    code, _, err = _niks3(daemon, tmp_path, capsys, "delete", secret.path)
    assert code == 1 and "referenced by" in err and app.path in err
    code, out, err = _niks3(daemon, tmp_path, capsys, "delete", secret.path, "--force", "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["deleted"]) == sorted([secret.path, app.path])
    assert f"deleted {secret.path}" in err
    keys = bucket_keys(daemon.s3)
    assert f"{dep.hash}.narinfo" in keys and f"{secret.hash}.narinfo" not in keys
