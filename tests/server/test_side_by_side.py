"""Sessions of different identities upload a shared object side by side (issue 20 item 1; docs/security.md, rule 1):
a claim of one identity never makes another wait, and of two uploads of one NAR the first that passes its check is
put in place; the other is dropped and its session completes all the same, its path pointing at the object that is
there. Sessions of one identity still wait for each other (tests/server/test_claim_leases.py).

Real daemon, PostgreSQL and SeaweedFS. The lease is an hour here: before, another identity waited that long.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import zstandard

from niks3d.nix.bucketkeys import nar_key
from niks3d.nix.hashes import format_sha256
from tests.server.bucketview import bucket_keys, get_object
from tests.server.pushkit import FakePath, PushKit, make_path

HOUR = {"claim_lease": "1h"}


def _objects(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["key"]: o for e in session["paths"] for o in e.get("objects", [])}


def _report(body: bytes) -> dict[str, Any]:
    return {"file_size": len(body), "file_hash": format_sha256(hashlib.sha256(body).digest())}


async def _upload(kit: PushKit, session: dict[str, Any], path: FakePath, nar: bytes) -> dict[str, Any]:
    """PUT every object the session was asked for (the NAR as ``nar``); the reports."""
    reports: dict[str, Any] = {}
    for key, spec in _objects(session).items():
        if spec["action"] == "none":
            continue
        body = nar if spec["kind"] == "nar" else path.listing
        if spec["action"] == "multipart":
            await kit.multipart(session["session_id"], spec, body)
        else:
            await kit.put(spec, body)
        reports[key] = _report(body) if spec["kind"] == "nar" else {"file_size": len(body)}
    return reports


async def _complete(kit: PushKit, session_id: str, reports: dict[str, Any]) -> dict[str, Any]:
    """Complete, again while another session's upload of an object is being checked (409, bounded: 20 s)."""
    for _ in range(40):
        answer = await kit.complete(session_id, reports, expect=(200, 409))
        if answer.get("state") == "completed":
            return answer
        assert answer["error"] == "objects_pending", answer
        await asyncio.sleep(0.5)
    raise AssertionError("the other session's upload was never put in place")


def _narinfo(daemon: Any, path: FakePath) -> dict[str, str]:
    with urllib.request.urlopen(f"{daemon.url}/{path.hash}.narinfo", timeout=30) as answer:
        text = answer.read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


async def test_other_identities_upload_side_by_side(start_daemon, tmp_path: Path) -> None:
    """The two cases below on one daemon (one start-up less in CI)."""
    daemon = start_daemon(gc=HOUR)
    await _squatters_of_other_identities_hold_nobody_up(daemon, tmp_path)
    await _of_two_uploads_of_one_nar_the_first_checked_is_published(daemon, tmp_path)


async def _squatters_of_other_identities_hold_nobody_up(daemon: Any, tmp_path: Path) -> None:
    """A squatter claims a NAR and never uploads it, and a second identity colluding with it claims it too (before,
    the second waited behind the first, and the two could hand the key to each other for a cap of an hour each).
    The victim, a third identity, is asked to upload at once and publishes; before, it waited for the squatter's
    lease, an hour here. Another session of the squatter's own identity still waits for the squatter."""
    path = make_path(tmp_path, random.Random(21), "shared")
    key = nar_key(path.nar_hash, "zstd")
    async with aiohttp.ClientSession() as http:
        squatter = PushKit(http, daemon.url, daemon.tokens["intruder"])
        colluder = PushKit(http, daemon.url, daemon.tokens["admin"])
        victim = PushKit(http, daemon.url, daemon.tokens["pusher"])
        held = await squatter.open([path], [path])
        assert _objects(held)[key]["action"] == "put"
        also = await colluder.open([path], [path])
        assert _objects(also)[key]["action"] == "put", "a claim of another identity made the colluder wait"
        again = await squatter.open([path], [path])
        assert _objects(again)[key] == {"kind": "nar", "key": key, "action": "none", "reason": "in_progress"}

        opened = await victim.open([path], [path])
        assert _objects(opened)[key]["action"] == "put", "the squatters' claims made the victim wait"
        done = await victim.complete(opened["session_id"], await _upload(victim, opened, path, path.compressed))
        assert done["published"] == [path.path]

        # The squatter's waiting session finds the path published; the claims of the others are just dropped.
        assert (await squatter.complete(again["session_id"], {}))["cached"] == [path.path]
        for kit, session in ((squatter, held), (colluder, also)):
            await kit.call("DELETE", f"/api/v1/sessions/{session['session_id']}")
    assert get_object(daemon.s3, key)[0] == path.compressed


async def _of_two_uploads_of_one_nar_the_first_checked_is_published(daemon: Any, tmp_path: Path) -> None:
    """Two identities upload the same NAR side by side, compressed differently, and report it at the same time,
    five NARs at once. For each NAR one upload is put in place, the other dropped; both sessions complete, both
    paths' narinfos name the object that is in the bucket (its size and hash), and no staged copy is left. One
    NAR is large: a multipart upload, completed by a report that then waited, is found staged by the next."""
    rng = random.Random(22)
    nars = [make_path(tmp_path, rng, f"twice{i}", size=200_000, incompressible=True) for i in range(4)]
    nars.append(make_path(tmp_path, rng, "large", size=12 << 20, incompressible=True))  # a multipart upload
    async with aiohttp.ClientSession() as http:
        kits = [PushKit(http, daemon.url, daemon.tokens[t]) for t in ("pusher", "intruder")]
        levels = [zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3, write_checksum=True)]
        # The second identity's paths are other store paths with the same NARs.
        mine = [nars, [FakePath(**{**vars(p), "path": p.path.replace(p.hash, p.hash[::-1])}) for p in nars]]
        sessions = [await kit.open(ps, ps) for kit, ps in zip(kits, mine, strict=True)]
        reports: list[dict[str, Any]] = []
        for kit, session, ps, zstd in zip(kits, sessions, mine, levels, strict=True):
            assert all(o["action"] in {"put", "multipart"} for o in _objects(session).values()), session
            got: dict[str, Any] = {}
            for p in ps:
                one = {**session, "paths": [e for e in session["paths"] if e["path"] == p.path]}
                got.update(await _upload(kit, one, p, zstd.compress(p.nar)))
            reports.append(got)
        answers = await asyncio.gather(
            *(_complete(kit, s["session_id"], r) for kit, s, r in zip(kits, sessions, reports, strict=True))
        )
    for answer, ps in zip(answers, mine, strict=True):
        assert sorted(answer["published"]) == sorted(p.path for p in ps)
    for group in zip(*mine, strict=True):
        key = nar_key(group[0].nar_hash, "zstd")
        body = get_object(daemon.s3, key)[0]
        assert body in {zstd.compress(group[0].nar) for zstd in levels}
        assert zstandard.ZstdDecompressor().decompress(body, max_output_size=len(group[0].nar)) == group[0].nar
        for p in group:
            info = _narinfo(daemon, p)
            assert info["URL"] == key and int(info["FileSize"]) == len(body), info
            assert info["FileHash"] == format_sha256(hashlib.sha256(body).digest()), info
    assert not [k for k in bucket_keys(daemon.s3) if k.startswith("staging/")]
