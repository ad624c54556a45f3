"""Claims are short leases (issue 20, item 1): a session that claims an object and makes no upload progress holds
up other pushes of it for one lease, however often it calls; upload progress, and only that, renews the lease.

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
        squatter = PushKit(http, daemon.url, daemon.tokens["intruder"])
        pusher = PushKit(http, daemon.url, daemon.tokens["pusher"])
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
        other = PushKit(http, daemon.url, daemon.tokens["admin"])
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
