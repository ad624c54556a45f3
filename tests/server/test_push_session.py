"""The push protocol end to end through the HTTP API, against real PostgreSQL and SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from pathlib import Path

import aiohttp
import zstandard

from niks3d.nix.bucketkeys import nar_key
from niks3d.nix.hashes import format_sha256
from niks3d.nix.narinfo import parse_narinfo
from tests.server.bucketview import bucket_keys, get_object, table_counts
from tests.server.pushkit import PushKit, make_closure, make_path


async def test_push_publishes_signed_narinfos_matching_the_objects(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon(n_keys=2)
    paths = make_closure(tmp_path, seed=1, n=4, log=True)
    big = make_path(
        tmp_path,
        random.Random(7),
        "big",
        size=12 * 1024 * 1024,
        references=[paths[0].path],
        incompressible=True,
    )
    closure = [*paths, big]
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        session = await kit.open(closure, [paths[-1], big])
        actions = Counter(o["action"] for e in session["paths"] for o in e["objects"])
        # a NAR and a log for each small path; no listing (niks3d writes them: docs/security.md, rule 8)
        assert actions["multipart"] == 1 and actions["put"] >= 2 * len(paths)
        assert all(o["kind"] != "ls" for e in session["paths"] for o in e["objects"])
        reports = await kit.upload(session, closure)
        result = await kit.complete(session["session_id"], reports)
    assert sorted(result["published"]) == sorted(p.path for p in closure)
    assert sorted(result["roots"]) == sorted([paths[-1].path, big.path])
    public = [k.public_key() for k in daemon.signing_keys]
    keys = bucket_keys(daemon.s3)
    for p in closure:
        text, _ = get_object(daemon.s3, f"{p.hash}.narinfo")
        info = parse_narinfo(text, expected_hash=p.hash)
        assert info.store_path.path == p.path
        assert info.nar_hash == p.nar_hash and info.nar_size == len(p.nar)
        assert [f"/nix/store/{r}" for r in info.references] == p.references
        assert info.compression == "zstd"
        nar_bytes, _ = get_object(daemon.s3, info.url)
        assert info.file_size == len(nar_bytes)
        assert info.file_hash == hashlib.sha256(nar_bytes).digest()
        assert zstandard.ZstdDecompressor().decompressobj().decompress(nar_bytes) == p.nar
        assert len(info.sigs) == len(public) == 2
        for key in public:
            assert any(key.verify(sig, info.fingerprint()) for sig in info.sigs), f"no valid {key.name} sig"
        assert f"{p.hash}.ls" in keys
        listing, _ = get_object(daemon.s3, f"{p.hash}.ls")
        assert listing == p.listing
        if p.log is not None:
            log_key = f"log/{p.deriver.rsplit('/', 1)[1]}"
            body, response = get_object(daemon.s3, log_key)
            assert response.get("ContentEncoding") == "zstd"
            assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == p.log
    counts = await table_counts(daemon.dsn)
    assert counts["store_paths"] == len(closure)
    assert counts["roots"] == 2
    assert counts["session_claims"] == 0


async def test_every_step_retried_gives_the_same_result_and_no_duplicates(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=2, n=3)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        first = await kit.open(paths, paths[-1:], key="retry-test", expect=201)
        again = await kit.open(paths, paths[-1:], key="retry-test", expect=200)
        assert again["session_id"] == first["session_id"]
        reports = await kit.upload(again, paths)
        sid = first["session_id"]
        report_1 = await kit.call("POST", f"/api/v1/sessions/{sid}/objects", {"objects": reports})
        report_2 = await kit.call("POST", f"/api/v1/sessions/{sid}/objects", {"objects": reports})
        assert report_1 == report_2 and not report_1["missing"]
        done_1 = await kit.complete(sid, reports)
        done_2 = await kit.complete(sid, reports)
        done_3 = await kit.complete(sid)
        assert done_1 == done_2 == done_3
        # Opening the same push again after completion finds everything cached.
        replay = await kit.open(paths, paths[-1:], key="retry-test")
        assert {e["status"] for e in replay["paths"]} == {"cached"}
        fresh = await kit.open(paths, paths[-1:])
        assert {e["status"] for e in fresh["paths"]} == {"cached"}
    expected = {f"{p.hash}.narinfo" for p in paths} | {f"{p.hash}.ls" for p in paths} | {"nix-cache-info"}
    keys = bucket_keys(daemon.s3)
    assert expected <= keys
    assert len([k for k in keys if k.startswith("nar/")]) == len(paths)
    assert len(keys) == len(expected) + len(paths)
    assert Counter(kit.uploads).most_common(1)[0][1] == 1


def _unstaged(keys: set[str]) -> set[str]:
    """Bucket keys with each staging key (``staging/<session>/<key>``) replaced by the key it is staged for."""
    return {k.split("/", 2)[2] if k.startswith("staging/") else k for k in keys}


async def test_missing_or_short_uploads_fail_complete_and_publish_nothing(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=3, n=3)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        session = await kit.open(paths, paths[-1:])
        specs = [o for e in session["paths"] for o in e["objects"]]
        nar_keys = [o["key"] for o in specs if o["kind"] == "nar"]
        short = nar_keys[0]
        reports = await kit.upload(session, paths, corrupt={short})
        skipped = nar_keys[1]
        reports.pop(skipped)
        missing_before = bucket_keys(daemon.s3)
        answer = await kit.complete(session["session_id"], reports, expect=422)
        assert answer["error"] == "objects_missing"
        assert short in answer["message"] or short in {m["key"] for m in answer["missing"]}
        assert {m["key"] for m in answer["missing"]} >= {short}
        assert {o["key"] for o in answer["objects"]} >= {short}
        assert not any(k.endswith(".narinfo") for k in bucket_keys(daemon.s3))
        # Accepted objects moved from the session's staging keys into place; nothing else was written (no
        # listing is uploaded: niks3d writes them at publication, docs/security.md rule 8).
        assert not any(k.endswith(".ls") for k in missing_before)
        assert _unstaged(missing_before) == _unstaged(bucket_keys(daemon.s3))
        counts = await table_counts(daemon.dsn)
        assert counts["store_paths"] == 0 and counts["roots"] == 0
        # Uploading what was asked for, then completing, publishes everything.
        nar_body = {nar_key(p.nar_hash): p.compressed for p in paths}
        redo: dict[str, dict[str, object]] = {}
        for spec in answer["objects"]:
            body = nar_body[spec["key"]]
            await kit.put(spec, body)
            redo[spec["key"]] = {
                "file_size": len(body),
                "file_hash": format_sha256(hashlib.sha256(body).digest()),
            }
        assert set(redo) == {short, skipped}
        done = await kit.complete(session["session_id"], redo)
        assert sorted(done["published"]) == sorted(p.path for p in paths)


async def test_overlapping_sessions_both_complete_and_share_uploads(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    shared = make_closure(tmp_path, seed=4, n=3)
    rng = random.Random(5)
    top_a = make_path(tmp_path, rng, "top-a", references=[shared[-1].path])
    top_b = make_path(tmp_path, rng, "top-b", references=[shared[-1].path])
    closure_a, closure_b = [*shared, top_a], [*shared, top_b]
    async with aiohttp.ClientSession() as http:
        kit_a = PushKit(http, daemon.url, daemon.tokens["pusher"])
        # one identity: sessions of other identities upload side by side (test_side_by_side.py)
        kit_b = PushKit(http, daemon.url, daemon.tokens["pusher"])
        session_a, session_b = await asyncio.gather(kit_a.open(closure_a, [top_a]), kit_b.open(closure_b, [top_b]))

        def uploaders(session: dict) -> set[str]:
            return {o["key"] for e in session["paths"] for o in e["objects"] if o["action"] != "none"}

        shared_keys = {
            o["key"] for e in session_a["paths"] if e["path"] in {p.path for p in shared} for o in e["objects"]
        }
        assert not (uploaders(session_a) & uploaders(session_b)), "a shared object was handed out twice"
        assert shared_keys <= uploaders(session_a) | uploaders(session_b)
        reports_a, reports_b = await asyncio.gather(
            kit_a.upload(session_a, closure_a), kit_b.upload(session_b, closure_b)
        )

        async def complete(kit: PushKit, sid: str, reports: dict) -> dict:
            for _ in range(50):
                answer = await kit.complete(sid, reports, expect=(200, 409))
                if "published" in answer:
                    return answer
                assert answer["error"] == "objects_pending"
                await asyncio.sleep(0.1)
            raise AssertionError("never completed")

        done_a, done_b = await asyncio.gather(
            complete(kit_a, session_a["session_id"], reports_a),
            complete(kit_b, session_b["session_id"], reports_b),
        )
    assert set(done_a["published"]) | set(done_b["published"]) == {p.path for p in [*shared, top_a, top_b]}
    uploads = Counter(kit_a.uploads + kit_b.uploads)
    assert uploads and max(uploads.values()) == 1
    counts = await table_counts(daemon.dsn)
    assert counts["store_paths"] == len(shared) + 2
