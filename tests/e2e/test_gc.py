"""Garbage collection end to end: `niks3 push` two closures that share dependencies, pin one, let the other's root
expire, run `niks3 gc`; Nix 2.8 still substitutes the pinned closure (signatures checked) and the rest is gone.
And crash safety: `niks3d gc` killed with SIGKILL in the middle of its sweep, several times; every time the
invariants hold, and the next run finishes the job."""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from niks3d.client.main import main
from niks3d.config import DatabaseSettings, S3Settings
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool
from niks3d.storage import open_bucket
from testkit.nixfixtures import build_expr, salted_expr
from tests.client.storekit import delete
from tests.e2e.gcchecks import assert_closure_consistent, bucket_state, nix_copy
from tests.fixtures.daemon import niks3d_argv
from tests.gc.gckit import Cache, Seeded

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

# the bindings of an expression of testkit/nixfixtures.py's salted_expr (its ``mk``)
CLOSURES = """\
  shared = mk "gc-shared" "echo building the shared library; mkdir $out; echo shared $salt > $out/lib";
  onlyA = mk "gc-only-a" "mkdir $out; echo a $salt > $out/data";
  onlyB = mk "gc-only-b" "echo building b; mkdir $out; echo b $salt > $out/data";
  topA = mk "gc-top-a" "echo building a; mkdir $out; echo ${shared} ${onlyA} > $out/refs";
  topB = mk "gc-top-b" "mkdir $out; echo ${shared} ${onlyB} > $out/refs";
in [ topA topB shared onlyA onlyB ]
"""


def _niks3(daemon: Any, tmp_path: Path, capsys: Any, token: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / f"token-{token}"
    path.write_text(daemon.tokens[token] + "\n")
    path.chmod(0o600)
    code = main([*args, "--server", daemon.url, "--token-file", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _deriver(path: str) -> str:
    return subprocess.run(["nix-store", "-qd", path], capture_output=True, text=True, check=True).stdout.strip()


async def _published(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["hash"] for r in await conn.fetch("SELECT hash FROM store_paths")}
    finally:
        await conn.close()


@pytest.mark.nix
def test_the_pinned_closure_survives_gc_and_the_expired_one_is_gone(start_daemon, tmp_path, capsys, request):
    top_a, top_b, shared, only_a, only_b = build_expr(salted_expr(CLOSURES, secrets.token_hex(6)), tmp_path)
    request.addfinalizer(lambda: delete(top_a, top_b, shared, only_a, only_b))
    daemon = start_daemon()
    for top, extra in ((top_a, ["--pin", "release"]), (top_b, [])):
        code, _, err = _niks3(daemon, tmp_path, capsys, "admin", "push", "--no-progress", top, *extra)
        assert code == 0, err
    before = bucket_state(daemon.s3)
    logs = {p: f"log/{Path(_deriver(p)).name}" for p in (shared, top_a, only_b)}
    assert set(logs.values()) <= set(before.sizes), "the builds' logs were pushed"

    # A's root is pinned; B's root expires (retention 0), and nothing is young enough to be spared
    code, out, err = _niks3(
        daemon, tmp_path, capsys, "collector", "gc", "--older-than", "0s", "--grace-period", "0s", "--json"
    )
    assert code == 0, err
    run = json.loads(out)
    assert run["state"] == "finished" and run["counts"]["paths_deleted"] == 2, run
    after = bucket_state(daemon.s3)
    vanished = set(before.sizes) - set(after.sizes)
    assert re.search(rf"gc run {run['run_id']} finished: deleted 2 paths and {len(vanished)} objects", err), err

    assert_closure_consistent(after)
    hashes = {p: Path(p).name[:32] for p in (top_a, top_b, shared, only_a, only_b)}
    for live in (top_a, shared, only_a):
        h = hashes[live]
        assert h in after.narinfos and f"{h}.ls" in after.sizes and after.narinfos[h].url in after.sizes, live
    assert logs[shared] in after.sizes and logs[top_a] in after.sizes
    for dead in (top_b, only_b):
        h = hashes[dead]
        assert not {k for k in after.sizes if k.startswith(h)}, dead
        assert before.narinfos[h].url not in after.sizes, dead
    assert logs[only_b] not in after.sizes
    assert asyncio.run(_published(daemon.dsn)) == {hashes[p] for p in (top_a, shared, only_a)}

    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    copied = nix_copy(daemon.s3, tmp_path, [top_a], keys)
    assert copied.returncode == 0, copied.stderr
    gone = nix_copy(daemon.s3, tmp_path, [top_b], keys)
    assert gone.returncode != 0 and top_b in gone.stderr
    summary = [line for line in daemon.log().splitlines() if "event=gc.finished" in line]
    assert len(summary) == 1 and "paths_deleted=2" in summary[0] and f"run_id={run['run_id']}" in summary[0]


async def _seed(dsn: str, s3: Any, seed: int) -> tuple[list[Seeded], list[Seeded]]:
    """Chains of paths: a third with live roots or pins, the rest with roots that expired; some share parts."""
    settings = S3Settings(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region)
    async with (
        open_pool(DatabaseSettings(url=dsn, pool_max_size=4), None) as pool,
        open_bucket(settings, s3.access_key_id, s3.secret_access_key) as bucket,
    ):
        await migrate(pool)
        cache = Cache(pool, bucket, seed)
        rng = random.Random(seed)
        live: list[Seeded] = []
        dead: list[Seeded] = []
        for chain in range(48):
            keep = chain % 3 == 0
            below: list[Seeded] = []
            for depth in range(8):
                refs = below[-2:] + ([rng.choice(live)] if live and rng.random() < 0.2 else [])
                top = depth == 7
                path = await cache.add_path(
                    f"c{chain}-{depth}",
                    refs,
                    log=rng.random() < 0.3,
                    self_ref=rng.random() < 0.3,
                    root=top,
                    root_age=timedelta(days=1 if keep else 60),
                    pin=f"pin-{chain}" if keep and top and chain % 2 else None,
                )
                below.append(path)
            (live if keep else dead).extend(below)
        return live, dead


async def _check(dsn: str, s3: Any, live: list[Seeded]) -> dict[str, int]:
    settings = S3Settings(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region)
    async with (
        open_pool(DatabaseSettings(url=dsn, pool_max_size=2), None) as pool,
        open_bucket(settings, s3.access_key_id, s3.secret_access_key) as bucket,
    ):
        keys = await Cache(pool, bucket).check()
        for path in live:
            assert path.keys <= keys, f"live {path.path} lost objects"
        async with pool.acquire() as conn:
            return {r["state"]: r["n"] for r in await conn.fetch("SELECT state, count(*) AS n FROM gc_runs GROUP BY 1")}


async def _stop_trials(
    config: Path, dsn: str, s3: Any, live: list[Seeded], signals: list[signal.Signals]
) -> list[int | None]:
    """Start ``niks3d gc``, wait until it sweeps (paths or objects), send it the next signal a while later, check
    the invariants; repeat. Returns the exit statuses (None: the run finished before its signal, ending the trials).
    """
    rng = random.Random(12)
    statuses: list[int | None] = []
    watcher = await asyncpg.connect(dsn)
    try:
        for trial, sig in enumerate(signals):
            last = await watcher.fetchval("SELECT coalesce(max(id), 0) FROM gc_runs")
            proc = await asyncio.create_subprocess_exec(
                *niks3d_argv("gc", "-c", str(config), "--json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            # some trials stop it as soon as it sweeps paths, others a random moment into the sweep
            delay = rng.choice([0.0, rng.uniform(0, 0.3), rng.uniform(0, 0.8)])
            deadline = time.monotonic() + 60
            while proc.returncode is None and time.monotonic() < deadline:
                phase = await watcher.fetchval("SELECT phase FROM gc_runs WHERE id > $1", last)  # this trial's run
                if phase in ("paths", "objects"):
                    await asyncio.sleep(delay)
                    break
                await asyncio.sleep(0.005)
            if proc.returncode is None:
                proc.send_signal(sig)
            _, err = await proc.communicate()
            await _check(dsn, s3, live)
            if proc.returncode == 0:
                statuses.append(None)
                break  # the job was done before the signal landed
            assert proc.returncode in (-sig, 128 + sig), f"trial {trial} ended with {proc.returncode}: {err.decode()}"
            statuses.append(proc.returncode)
    finally:
        await watcher.close()
    return statuses


def test_killed_collectors_leave_the_cache_consistent_and_the_next_run_finishes(make_daemon_config, tmp_path):
    daemon = make_daemon_config(gc={"batch_size": 1}, logging={"level": "info", "format": "text"})
    live, dead = asyncio.run(_seed(daemon.dsn, daemon.s3, seed=11))
    # SIGTERM first (a clean stop: the run records itself interrupted), then SIGKILL at random points
    signals = [signal.SIGTERM] + [signal.SIGKILL] * 5
    statuses = asyncio.run(_stop_trials(daemon.config_path, daemon.dsn, daemon.s3, live, signals))
    assert statuses[0] == 143, "SIGTERM: niks3d gc exits 128+15 after recording the run as interrupted"
    kills = sum(1 for s in statuses if s == -signal.SIGKILL)
    assert kills >= 3, "the collector finished before it could be killed: give it more to do"
    final = subprocess.run(
        niks3d_argv("gc", "-c", str(daemon.config_path), "--json"), capture_output=True, text=True, check=False
    )
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["state"] == "finished"
    runs = asyncio.run(_check(daemon.dsn, daemon.s3, live))
    assert runs.get("interrupted") == kills + 1 and runs.get("finished", 0) >= 1 and "running" not in runs
    published = asyncio.run(_published(daemon.dsn))
    assert published == {p.hash for p in live}
    assert not {p.hash for p in dead} & published
    errors = asyncio.run(_errors(daemon.dsn))
    assert errors[0] == "cancelled: the process running it is stopping"
    assert all("the process running it stopped" in e for e in errors[1 : kills + 1])


async def _errors(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [
            r["error"] for r in await conn.fetch("SELECT error FROM gc_runs WHERE state = 'interrupted' ORDER BY id")
        ]
    finally:
        await conn.close()
