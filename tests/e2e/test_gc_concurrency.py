"""Pushes of overlapping closures racing forced garbage-collection runs, at random, through the real daemon.

Every step starts a few pushes (some of them abandoned half-way), and a GC run with no grace period and a
retention of a few seconds, so that paths expire all the time while other pushes need them again. After every
step, with nothing in flight, the bucket must be closure-consistent (every narinfo's NAR and references are there)
and every acknowledged push whose root cannot have expired yet, and every pinned one, must be fully substitutable
(signed narinfos, NARs with the promised hash). At the end the real Nix copies them. The test runs for
``NIKS3_GC_STRESS_SECONDS`` (default 25) seconds, and for at least ten rounds however slow the machine is.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from niks3d.nix.bucketkeys import log_key, ls_key, nar_key
from niks3d.nix.hashes import format_sha256
from tests.e2e.gcchecks import assert_closure_consistent, assert_substitutable, bucket_state, nix_copy
from tests.server.pushkit import ZSTD, FakePath, PushKit, make_path

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

STRESS_SECONDS = float(os.environ.get("NIKS3_GC_STRESS_SECONDS", "25"))
OLDER_THAN = 2.0  # seconds a pushed root stays live
MIN_GC_RUNS = 10  # rounds (each a forced GC run racing 3-8 pushes) however long they take


@dataclass
class Universe:
    paths: list[FakePath]
    apps: list[FakePath]
    by_path: dict[str, FakePath]

    def closure(self, root: FakePath) -> list[FakePath]:
        seen: dict[str, FakePath] = {}
        todo = [root]
        while todo:
            p = todo.pop()
            if p.path not in seen:
                seen[p.path] = p
                todo.extend(self.by_path[r] for r in p.references if r != p.path)
        return list(seen.values())


def _universe(tmp: Path, seed: int) -> Universe:
    """Libraries that build on each other, and apps on top that share them (and sometimes each other)."""
    rng = random.Random(seed)
    libs: list[FakePath] = []
    for i in range(10):
        refs = [p.path for p in rng.sample(libs, k=min(len(libs), rng.randint(0, 2)))]
        libs.append(make_path(tmp, rng, f"lib{i}", size=600, references=refs, log=rng.random() < 0.3))
    apps: list[FakePath] = []
    for i in range(24):
        refs = [p.path for p in rng.sample(libs, k=rng.randint(1, 3))]
        if apps and rng.random() < 0.3:
            refs.append(rng.choice(apps).path)
        app = make_path(tmp, rng, f"app{i}", size=900, references=refs, log=rng.random() < 0.5)
        if rng.random() < 0.3:
            app.references = sorted([*app.references, app.path])
        apps.append(app)
    paths = libs + apps
    return Universe(paths, apps, {p.path: p for p in paths})


def _bodies(paths: list[FakePath]) -> dict[str, bytes]:
    bodies: dict[str, bytes] = {}
    for p in paths:
        bodies[nar_key(p.nar_hash, "zstd")] = p.compressed
        bodies[ls_key(p.hash)] = p.listing
        if p.log is not None and p.deriver is not None:
            bodies[log_key(p.deriver.rsplit("/", 1)[1])] = ZSTD.compress(p.log)
    return bodies


class Stress:
    def __init__(self, daemon: Any, http: aiohttp.ClientSession, universe: Universe, seed: int) -> None:
        self.daemon = daemon
        self.http = http
        self.universe = universe
        self.rng = random.Random(seed)
        self.kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        self.collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        self.acked: dict[str, float] = {}  # root path -> when its latest acknowledged complete was sent
        self.pinned: set[str] = set()
        self.stats = {"pushes": 0, "aborted": 0, "reuploads": 0, "gc_runs": 0, "gc_paths_deleted": 0, "checks": 0}
        self.published_before: set[str] = set()

    async def _upload(self, specs: list[dict[str, Any]], bodies: dict[str, bytes]) -> dict[str, Any]:
        reports: dict[str, Any] = {}
        for spec in specs:
            if spec["action"] == "none":
                continue
            assert spec["action"] == "put", spec
            await self.kit.put(spec, bodies[spec["key"]])
            reports[spec["key"]] = {"file_size": len(bodies[spec["key"]])}
            if spec["kind"] == "nar":
                reports[spec["key"]]["file_hash"] = format_sha256(hashlib.sha256(bodies[spec["key"]]).digest())
        return reports

    async def push(self, root: FakePath, *, abandon: bool = False) -> None:
        closure = self.universe.closure(root)
        bodies = _bodies(closure)
        session = await self.kit.open(closure, [root])
        specs = [o for entry in session["paths"] for o in entry.get("objects", [])]
        again = {e["path"] for e in session["paths"] if e["status"] == "upload"} & self.published_before
        self.stats["reuploads"] += len(again)
        reports = await self._upload(specs, bodies)
        url = f"{self.daemon.url}/api/v1/sessions/{session['session_id']}"
        if abandon and session.get("state") == "completed":
            # Every path was published already: the open completed the session (docs/api.md), nothing to abort.
            return
        if abandon:
            await self.kit.call("DELETE", url[len(self.daemon.url) :])
            self.stats["aborted"] += 1
            return
        for _ in range(100):
            sent = time.time()
            async with self.http.post(f"{url}/complete", json={"objects": reports}, headers=self.kit.auth) as r:
                body = await r.json()
            if r.status == 200:
                self.acked[root.path] = max(self.acked.get(root.path, 0.0), sent)
                self.published_before.update(p.path for p in closure)
                self.stats["pushes"] += 1
                return
            if r.status == 409 and body["error"] == "objects_pending":
                await asyncio.sleep(0.05)
                continue
            assert r.status == 422 and body["error"] == "objects_missing", (r.status, body)
            reports.update(await self._upload(body["objects"], bodies))
        raise AssertionError(f"the push of {root.path} never completed")

    async def gc(self, delay: float) -> None:
        await asyncio.sleep(delay)
        started = await self.collector.call("POST", "/api/v1/gc", {"force": True, "older_than": OLDER_THAN}, expect=202)
        while True:
            run = await self.collector.call("GET", f"/api/v1/gc/{started['run_id']}")
            if run["state"] != "running":
                break
            await asyncio.sleep(0.02)
        assert run["state"] == "finished", run
        self.stats["gc_runs"] += 1
        self.stats["gc_paths_deleted"] += run["counts"]["paths_deleted"]

    def guaranteed(self, now: float) -> list[str]:
        """Roots that cannot have expired in any run started so far, and pinned roots."""
        return sorted({r for r, sent in self.acked.items() if sent > now - OLDER_THAN + 0.05} | self.pinned)

    async def check(self) -> None:
        now = time.time()
        state = await asyncio.to_thread(bucket_state, self.daemon.s3)
        assert_closure_consistent(state)
        key = self.daemon.signing_keys[0].public_key()
        for root in self.guaranteed(now):
            await asyncio.to_thread(assert_substitutable, self.daemon.s3, state, root.split("/")[3][:32], key)
        conn = await asyncpg.connect(self.daemon.dsn)
        try:
            present = {r["key"] for r in await conn.fetch("SELECT key FROM objects WHERE state = 'present'")}
            tracked = {r["key"] for r in await conn.fetch("SELECT key FROM objects")}
        finally:
            await conn.close()
        assert present <= set(state.sizes), f"rows say present, the bucket lacks {sorted(present - set(state.sizes))}"
        assert set(state.sizes) - {"nix-cache-info"} <= tracked, "the bucket holds objects the database does not know"
        self.stats["checks"] += 1

    async def step(self) -> None:
        ops = [self.push(self.rng.choice(self.universe.apps)) for _ in range(self.rng.randint(3, 7))]
        if self.rng.random() < 0.4:
            # A push that uploads and then gives up, while the others run: it leaves pending objects for GC,
            # and objects the others may be waiting on (they take them over or upload them again).
            ops.append(self.push(self.rng.choice(self.universe.apps), abandon=True))
        ops.append(self.gc(self.rng.uniform(0, 0.3)))
        await asyncio.gather(*ops)
        await self.check()


@pytest.mark.timeout(STRESS_SECONDS + 420)
async def test_pushes_racing_forced_gc_runs_never_break_the_cache(start_daemon: Any, tmp_path: Path) -> None:
    # Small batches spread each run's sweep over many short transactions, so pushes land between them.
    daemon = start_daemon(database={"pool_max_size": 24}, gc={"batch_size": 2})
    universe = _universe(tmp_path, seed=40)
    async with aiohttp.ClientSession() as http:
        stress = Stress(daemon, http, universe, seed=41)
        pinner = PushKit(http, daemon.url, daemon.tokens["pinner"])
        for i, app in enumerate(universe.apps[:3]):
            await stress.push(app)
            await pinner.call("PUT", f"/api/v1/pins/keep-{i}", {"path": app.path})
            stress.pinned.add(app.path)
        # At least MIN_GC_RUNS rounds even when a loaded machine makes each round slow; the timeout bounds it.
        deadline = time.monotonic() + STRESS_SECONDS
        while time.monotonic() < deadline or stress.stats["gc_runs"] < MIN_GC_RUNS:
            await stress.step()
        final = stress.guaranteed(time.time())
    s = stress.stats
    assert s["gc_runs"] >= MIN_GC_RUNS and s["gc_paths_deleted"] > 0 and s["reuploads"] > 0 and s["aborted"] > 0, s
    if os.environ.get("NIKS3_GC_STRESS_NIX", "1") == "1" and final:
        keys = [k.public_key().to_text() for k in daemon.signing_keys]
        copied = await asyncio.to_thread(nix_copy, daemon.s3, tmp_path, final, keys)
        assert copied.returncode == 0, copied.stderr
    print(f"gc stress: {s}")
