"""Claims are short leases (issue 20, item 1): a session that claims an object and makes no upload progress holds
up other pushes of it by the same identity for one lease, however often it calls; upload progress, and only that,
renews the lease. (Sessions of other identities upload the object on their own: tests/server/test_side_by_side.py.)

Real daemon, PostgreSQL and SeaweedFS; the lease is 2 s here (``gc.claim_lease``), 30 s by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from niks3d.nix.bucketkeys import nar_key
from niks3d.nix.hashes import format_sha256
from tests.server.bucketview import bucket_keys, get_object
from tests.server.pushkit import ZSTD, FakePath, PushKit, make_path

LEASE = {"claim_lease": "2s"}


def _objects(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["key"]: o for e in session["paths"] for o in e.get("objects", [])}


async def _until_taken_over(kit: PushKit, session_id: str, *, tries: int = 60) -> dict[str, Any]:
    """Complete until the server hands this session the uploads (422 objects_missing); each try is 409 pending.

    ``tries`` bounds the wait at 30 s, fifteen leases; before leases the wait was ten minutes after the
    squatter's last call, and forever while it kept calling."""
    for _ in range(tries):
        answer = await kit.complete(session_id, {}, expect=(409, 422))
        if answer["error"] == "objects_missing":
            return answer
        assert answer["error"] == "objects_pending", answer
        await asyncio.sleep(0.5)
    raise AssertionError("the other session's claim never ran out")


async def _lease_ran_out(dsn: str, session_id: str) -> None:
    """Wait (bounded) until every uploader lease of ``session_id`` has run out, as the database sees it."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            live = await conn.fetchval(
                "SELECT count(*) FROM session_claims WHERE session_id = $1 AND uploader AND lease_until > now()",
                session_id,
            )
            if live == 0:
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise AssertionError(f"the leases of {session_id} never ran out")


def _report(body: bytes) -> dict[str, Any]:
    return {"file_size": len(body), "file_hash": format_sha256(hashlib.sha256(body).digest())}


async def test_a_squatting_claim_holds_others_up_for_one_lease_not_while_it_calls(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon(gc=LEASE)
    path = make_path(tmp_path, random.Random(1), "shared")
    key = nar_key(path.nar_hash, "zstd")
    async with aiohttp.ClientSession() as http:
        squatter = PushKit(http, daemon.url, daemon.tokens["pusher"])
        pusher = PushKit(http, daemon.url, daemon.tokens["pusher"])  # another session of the same identity
        held = await squatter.open([path], [path])
        assert _objects(held)[key]["action"] == "put"
        waiting = await pusher.open([path], [path])
        assert _objects(waiting)[key] == {"kind": "nar", "key": key, "action": "none", "reason": "in_progress"}

        async def keep_calling() -> None:  # calls are not progress: they must not keep the claim
            while True:
                await squatter.call("POST", f"/api/v1/sessions/{held['session_id']}/urls", {"objects": [{"key": key}]})
                await squatter.call("GET", f"/api/v1/sessions/{held['session_id']}")
                await asyncio.sleep(0.2)

        caller = asyncio.create_task(keep_calling())
        try:
            missing = await _until_taken_over(pusher, waiting["session_id"])
        finally:
            caller.cancel()
        specs = {o["key"]: o for o in missing["objects"]}
        assert set(specs) >= {key}
        reports = {}
        for k, spec in specs.items():
            body = path.compressed if spec["kind"] == "nar" else path.listing
            await pusher.put(spec, body)
            reports[k] = _report(body) if spec["kind"] == "nar" else {"file_size": len(body)}
        done = await pusher.complete(waiting["session_id"], reports)
        assert done["published"] == [path.path]

        # The squatter uploads late, with its old URL: the key is present, so its report is accepted and its
        # staged copy deleted; its complete finds the path published.
        late = _objects(held)[key]
        await squatter.put(late, path.compressed)
        accepted = await squatter.call(
            "POST", f"/api/v1/sessions/{held['session_id']}/objects", {"objects": {key: _report(path.compressed)}}
        )
        assert key in accepted["accepted"]
        result = await squatter.complete(held["session_id"], {})
        assert result["cached"] == [path.path] and result["published"] == []
    assert get_object(daemon.s3, key)[0] == path.compressed
    assert not [k for k in bucket_keys(daemon.s3) if k.startswith("staging/")]


async def _big_path(tmp_path: Path) -> FakePath:
    return make_path(tmp_path, random.Random(2), "big", size=12 * 1024 * 1024, incompressible=True)


async def _put_part(http: aiohttp.ClientSession, spec: dict[str, Any], body: bytes, n: int) -> None:
    size = spec["part_size"]
    part = next(p for p in spec["parts"] if p["part_number"] == n)
    async with http.put(part["url"], data=io.BytesIO(body[(n - 1) * size : n * size]), headers=part["headers"]) as r:
        assert r.status == 200, await r.text()


async def test_multipart_progress_renews_a_lease_and_its_end_hands_the_upload_over(
    start_daemon, tmp_path: Path
) -> None:
    daemon = start_daemon(gc=LEASE)
    path = await _big_path(tmp_path)
    key = nar_key(path.nar_hash, "zstd")
    body = ZSTD.compress(path.nar)
    async with aiohttp.ClientSession() as http:
        slow = PushKit(http, daemon.url, daemon.tokens["pusher"])
        other = PushKit(http, daemon.url, daemon.tokens["pusher"])
        first = await slow.open([path], [path])
        spec = _objects(first)[key]
        assert spec["action"] == "multipart"
        second = await other.open([path], [path])

        # Part 1 arrives after the lease ran out: the bytes renew it, so the other session still waits.
        await _lease_ran_out(daemon.dsn, first["session_id"])
        await _put_part(http, spec, body, 1)
        pending = await other.complete(second["session_id"], {}, expect=409)
        assert pending["error"] == "objects_pending" and key in pending["pending"]

        # No more bytes for a lease: the upload is handed over, and the slow session's multipart upload aborted.
        await _lease_ran_out(daemon.dsn, first["session_id"])
        missing = await other.complete(second["session_id"], {}, expect=422)
        taken = {o["key"]: o for o in missing["objects"]}[key]
        assert taken["action"] == "multipart" and taken["upload_id"] != spec["upload_id"]
        reports: dict[str, Any] = {}
        for k, o in {o["key"]: o for o in missing["objects"]}.items():
            if o["kind"] == "nar":
                await other.multipart(second["session_id"], o, body)
                reports[k] = _report(body)
            else:
                await other.put(o, path.listing)
                reports[k] = {"file_size": len(path.listing)}
        done = await other.complete(second["session_id"], reports)
        assert done["published"] == [path.path]
    assert get_object(daemon.s3, key)[0] == body


async def _feed(
    http: aiohttp.ClientSession, kit: PushKit, session_id: str, key: str, part: bytes, got: list[int], *, relay: bool
) -> None:
    """A squatter that keeps its claim "making progress": a new part of ``part`` bytes every 0.4 s, numbered
    1, 2, 3, ... past what the NAR needs, the numbers S3 accepted appended to ``got``, until its upload is taken
    over (it gets no part URLs any more: it only waits now). ``relay``: one of several sessions of the squatter,
    which then asks (every 50 ms, faster than any honest client) to be handed the upload again, and feeds it."""
    n = 1
    urls = f"/api/v1/sessions/{session_id}/urls"
    while True:
        (spec,) = (await kit.call("POST", urls, {"objects": [{"key": key}]}))["objects"]
        if spec["action"] != "multipart":
            if not relay:
                return
            await kit.complete(session_id, {}, expect=(409, 422))
            await asyncio.sleep(0.05)
            continue
        (spec,) = (await kit.call("POST", urls, {"objects": [{"key": key, "parts": [n]}]}))["objects"]
        (url,) = spec["parts"]
        async with http.put(url["url"], data=io.BytesIO(part), headers=url["headers"]) as r:
            if r.status == 200:
                got.append(n)
        n += 1
        await asyncio.sleep(0.4)


Seen = list[tuple[Any, Any, Any]]


async def _watch(dsn: str, seen: Seen, sessions: list[str]) -> None:
    """Record (session, lease_until, lease_cap) of the squatter's uploader claims on its NAR."""
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await conn.fetch(
                """SELECT c.session_id, c.lease_until, c.lease_cap FROM session_claims c
                   WHERE c.session_id = ANY($1::text[]::uuid[]) AND c.uploader AND c.key LIKE 'nar/%'""",
                sessions,
            )
            seen.extend((r["session_id"], r["lease_until"], r["lease_cap"]) for r in rows)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _squat_and_wait(
    daemon: Any, tmp_path: Path, part_size: int, sessions: int = 1, honest_token: str = "intruder"
) -> tuple[list[int], Seen]:
    """The squatter claims a big NAR with ``sessions`` sessions and feeds it parts of ``part_size`` bytes; the
    honest pusher of the same NAR (by default another session of the squatter's identity, the only one that waits
    for it) completes until it is handed the upload (bounded: _until_taken_over), uploads and publishes it.
    Returns the parts the squatter got in, and its uploader claims as they were seen."""
    path = await _big_path(tmp_path)
    key = nar_key(path.nar_hash, "zstd")
    body = ZSTD.compress(path.nar)
    got: list[int] = []
    seen: Seen = []
    async with aiohttp.ClientSession() as http:
        squatter = PushKit(http, daemon.url, daemon.tokens["intruder"])
        honest = PushKit(http, daemon.url, daemon.tokens[honest_token])
        held = [await squatter.open([path], [path]) for _ in range(sessions)]
        assert _objects(held[0])[key]["action"] == "multipart"
        waiting = await honest.open([path], [path])
        junk = b"\0" * part_size
        tasks = [
            asyncio.create_task(_feed(http, squatter, h["session_id"], key, junk, got, relay=sessions > 1))
            for h in held
        ]
        tasks.append(asyncio.create_task(_watch(daemon.dsn, seen, [h["session_id"] for h in held])))
        try:
            if sessions > 1:
                # The honest pusher asks only once the squatter's second session took the upload over.
                for _ in range(60):
                    if len({sid for sid, _, _ in seen}) > 1:
                        break
                    await asyncio.sleep(0.25)
                else:
                    raise AssertionError("the squatter's second session never took the upload over")
            missing = await _until_taken_over(honest, waiting["session_id"], tries=40)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        taken = {o["key"]: o for o in missing["objects"]}
        assert taken[key]["action"] == "multipart", taken
        reports: dict[str, Any] = {}
        for k, o in taken.items():
            if o["kind"] == "nar":
                await honest.multipart(waiting["session_id"], o, body)
                reports[k] = _report(body)
            else:
                await honest.put(o, path.listing)
                reports[k] = {"file_size": len(path.listing)}
        done = await honest.complete(waiting["session_id"], reports)
        assert done["published"] == [path.path]
    assert get_object(daemon.s3, key)[0] == body
    assert got, "S3 accepted none of the squatter's parts: the attack was not made"
    assert seen, "the squatter's claim was never seen"
    return got, seen


async def test_a_claim_fed_whole_parts_is_taken_over_at_its_cap(start_daemon, tmp_path: Path) -> None:
    """Claim-and-sit with real bytes: a new whole part (5 MiB of junk) every 0.4 s is progress, so it renews the
    squatter's 2 s lease again and again, but never past its cap, ``claim_max_lease`` (6 s here) after it became
    the uploader; then the honest pusher is handed the upload. Without the cap it waited for as long as the
    squatter kept sending."""
    daemon = start_daemon(gc={"claim_lease": "2s", "claim_max_lease": "6s"})
    _, seen = await _squat_and_wait(daemon, tmp_path, 5 * 1024 * 1024)
    _, first, cap = seen[0]
    assert max(until for _, until, _ in seen) > first, "the whole parts never renewed the lease: nothing was shown"
    assert all(until <= cap and c == cap for _, until, c in seen), seen


async def test_a_second_session_of_the_squatter_does_not_start_the_cap_again(start_daemon, tmp_path: Path) -> None:
    """The same with two sessions of the squatter: when the first reaches its cap, the second, asking every 50 ms,
    takes the upload over and feeds it in turn. The cap is the identity's (claim_caps), so the second session
    gets the first one's, already past. Before, the second session started a fresh cap, then the first, and so
    on for as long as they liked. (Past the cap the squatter's sessions take the upload from each other as they
    like; the honest pusher here is another identity, which uploads on its own.)"""
    daemon = start_daemon(gc={"claim_lease": "2s", "claim_max_lease": "6s"})
    _, seen = await _squat_and_wait(daemon, tmp_path, 5 * 1024 * 1024, sessions=2, honest_token="pusher")
    assert len({sid for sid, _, _ in seen}) == 2 and len({cap for _, _, cap in seen}) == 1, sorted(set(seen))


async def test_a_claim_fed_small_parts_holds_others_up_for_one_lease(start_daemon, tmp_path: Path) -> None:
    """Claim-and-sit with a trickle: parts of 1 KiB, one after another, are not whole parts and renew nothing,
    so the honest pusher is handed the upload after one lease, long before the cap (1 h, the default). Before,
    every part was progress (more bytes), renewing the lease for as long as the squatter kept sending."""
    daemon = start_daemon(gc=LEASE)
    _, seen = await _squat_and_wait(daemon, tmp_path, 1024)
    assert {until for _, until, _ in seen} == {seen[0][1]}, "a small part renewed the lease"
