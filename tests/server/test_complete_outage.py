"""S3 stops answering between two narinfo levels of one ``complete`` (docs/operations.md, "When PostgreSQL or S3
stops answering"): the daemon is held at the point between the levels (niks3d/testhooks.py), SeaweedFS is frozen
there (SIGSTOP), and the daemon let go. The complete answers 503; the lower levels' narinfos stay in the bucket,
each with its NAR (a PUT sent into the frozen server may still land when it goes on), and nothing of the closure
is published. Then either the same complete is sent again and
publishes the closure, or the session is aborted and the lower level's narinfos are gone (docs/security.md,
rule 6). The bucket is closure-consistent all along (one listing of it after each step; fsck at the end:
tests/e2e/gcchecks.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from niks3d.devenv.seaweedfs import SeaweedServer
from tests.e2e.gcchecks import bucket_state, cache_problems, closure_problems
from tests.fixtures.own import OWN_BUCKET
from tests.fixtures.s3 import S3Bucket
from tests.server.faultkit import CLIENT_TIMEOUT, FAST, frozen, s3_section, wait_ready
from tests.server.pushkit import FakePath, PushKit, make_closure

POINT = "publish.level"


async def _held(hooks: Path) -> None:
    """Wait (bounded) until the daemon stops at the pause point."""
    for _ in range(300):
        if (hooks / f"{POINT}.reached").exists():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the complete never reached the point between two narinfo levels")


async def _cut_off(kit: PushKit, hooks: Path, s3: SeaweedServer, session_id: str, reports: dict[str, Any]) -> Any:
    """``complete`` held between its first and second narinfo level, S3 frozen there: its answer."""
    (hooks / f"{POINT}.armed").touch()
    started = time.monotonic()
    answer = asyncio.create_task(kit.complete(session_id, reports, expect=503))
    await _held(hooks)
    with frozen(lambda: [s3.pid]):
        (hooks / f"{POINT}.reached").unlink()
        async with asyncio.timeout(CLIENT_TIMEOUT):
            done = await answer
    assert time.monotonic() - started < 60
    return done


def _narinfos(view: S3Bucket, paths: list[FakePath]) -> list[bool]:
    """Which of ``paths`` have a narinfo in the bucket; asserts that every narinfo there has its NAR (with its
    FileSize) and its references' narinfos (design invariant 1, one listing of the bucket)."""
    state = bucket_state(view)
    assert closure_problems(state) == []
    return [p.hash in state.narinfos for p in paths]


async def test_s3_lost_between_two_narinfo_levels_of_a_complete(
    own_s3: SeaweedServer, make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # S3 calls give up within 2 s here (a PUT into the frozen server, once): the 503 comes at once.
    s3 = {**s3_section(own_s3, OWN_BUCKET, tmp_path), "read_timeout": 1.0, "request_timeout": 2.0, "max_attempts": 1}
    config = make_daemon_config(s3=s3, server=FAST["server"])
    config.extra_env = {"NIKS3D_TEST_HOOKS": str(hooks)}
    daemon = start_daemon(config)
    view = S3Bucket(own_s3.endpoint_url, OWN_BUCKET, own_s3.access_key_id, own_s3.secret_access_key, own_s3.region)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        for seed, retried in ((51, True), (52, False)):
            closure = make_closure(tmp_path, seed=seed, n=3)  # p0 <- p1 <- p2: three narinfo levels
            session = await kit.open(closure, closure[-1:])
            reports = await kit.upload(session, closure)
            answer = await _cut_off(kit, hooks, own_s3, session["session_id"], reports)
            assert answer["error"] == "unavailable", answer
            await wait_ready(daemon.url)
            # The first level went out before S3 stopped, the third never; the second's PUT, sent into the frozen
            # SeaweedFS, may land once it goes on. Nothing of the closure is published.
            first, _, third = await asyncio.to_thread(_narinfos, view, closure)
            assert first and not third
            for p in closure:
                await kit.call("GET", f"/{p.hash}.narinfo", expect=404)  # the read proxy serves none of it
            if retried:
                done = await kit.complete(session["session_id"], reports)
                assert sorted(done["published"]) == sorted(p.path for p in closure)
                assert await asyncio.to_thread(_narinfos, view, closure) == [True, True, True]
            else:
                await kit.call("DELETE", f"/api/v1/sessions/{session['session_id']}")
                assert await asyncio.to_thread(_narinfos, view, closure) == [False, False, False]
    assert await cache_problems(daemon.config_path) == []
