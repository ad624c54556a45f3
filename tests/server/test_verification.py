"""What complete checks before it signs: sizes always, and with s3.verify = "full" the NAR itself; a multipart
upload that arrived short is handed out again as a fresh multipart upload."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from niks3d.nix.hashes import format_sha256
from tests.server.bucketview import bucket_keys, table_counts
from tests.server.pushkit import ZSTD, PushKit, make_closure, make_path


async def test_full_verification_refuses_a_nar_that_does_not_match_its_metadata(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(s3={"verify": "full"})
    good, liar = make_closure(tmp_path, seed=30, n=2)
    liar.references = []
    impostor = make_path(tmp_path, random.Random(31), "impostor")
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        session = await kit.open([good, liar], [good, liar])
        reports: dict[str, Any] = {}
        for p, body in ((good, good.compressed), (liar, ZSTD.compress(impostor.nar))):
            nar_spec = next(
                o for e in session["paths"] if e["path"] == p.path for o in e["objects"] if o["kind"] == "nar"
            )
            await kit.put(nar_spec, body)
            reports[nar_spec["key"]] = {
                "file_size": len(body),
                "file_hash": format_sha256(hashlib.sha256(body).digest()),
            }
        sid = session["session_id"]
        answer = await kit.call("POST", f"/api/v1/sessions/{sid}/objects", {"objects": reports}, expect=422)
        assert answer["error"] == "objects_invalid" and "so it was aborted" in answer["message"]
        (invalid,) = answer["invalid"]
        assert "NarHash mismatch" in invalid["reason"] or "NarSize mismatch" in invalid["reason"], invalid
        body = await kit.complete(sid, expect=409)
        assert body["error"] == "session_closed"
    assert not any(k.endswith(".narinfo") for k in bucket_keys(daemon.s3))
    assert (await table_counts(daemon.dsn))["store_paths"] == 0


async def test_a_short_multipart_upload_gets_a_fresh_upload(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon()
    big = make_path(tmp_path, random.Random(40), "big", size=11 * 1024 * 1024, incompressible=True)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        session = await kit.open([big], [big])
        sid = session["session_id"]
        nar_spec = next(o for o in session["paths"][0]["objects"] if o["kind"] == "nar")
        assert nar_spec["action"] == "multipart"
        body = big.compressed
        # Only the first part arrives, but the client claims the whole size.
        part = nar_spec["parts"][0]
        async with http.put(part["url"], data=io.BytesIO(body[: nar_spec["part_size"]]), headers=part["headers"]) as r:
            assert r.status == 200
        reports = {
            nar_spec["key"]: {"file_size": len(body), "file_hash": format_sha256(hashlib.sha256(body).digest())},
        }
        answer = await kit.complete(sid, reports, expect=422)
        assert [m["key"] for m in answer["missing"]] == [nar_spec["key"]]
        assert "size mismatch" in answer["missing"][0]["reason"] or "not found" in answer["missing"][0]["reason"]
        (fresh,) = answer["objects"]
        assert fresh["action"] == "multipart" and fresh["upload_id"] != nar_spec["upload_id"]
        await kit.multipart(sid, fresh, body)
        done = await kit.complete(sid, {nar_spec["key"]: reports[nar_spec["key"]]})
        assert done["published"] == [big.path]


@pytest.mark.parametrize("verify", ["size", "full"])
async def test_only_a_trusted_token_is_spared_verification(start_daemon: Any, tmp_path: Path, verify: str) -> None:
    """docs/security.md, rule 1: with s3.verify = "size" a trusted token's NAR is checked for its size only;
    with "full", and for every ordinary token, it is verified (a junk NAR is refused and the session aborted)."""
    daemon = start_daemon(s3={"verify": verify})
    (path,) = make_closure(tmp_path, seed=50, n=1)
    junk = b"not zstd at all " * 8
    async with aiohttp.ClientSession() as http:
        outcomes = {}
        for token in ("trusted", "pusher"):
            kit = PushKit(http, daemon.url, daemon.tokens[token])
            session = await kit.open([path], [path], expect=(200, 201))
            specs = {o["kind"]: o for o in session["paths"][0].get("objects", [])}
            if not specs:
                outcomes[token] = "cached"
                continue
            await kit.put(specs["nar"], junk)
            reports = {
                specs["nar"]["key"]: {
                    "file_size": len(junk),
                    "file_hash": format_sha256(hashlib.sha256(junk).digest()),
                },
            }
            body = await kit.complete(session["session_id"], reports, expect=(200, 422))
            outcomes[token] = body.get("state") or body["error"]
    if verify == "size":
        assert outcomes == {"trusted": "completed", "pusher": "cached"}
    else:
        assert outcomes == {"trusted": "objects_invalid", "pusher": "objects_invalid"}
