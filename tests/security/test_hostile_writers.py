"""The six attacks of issue 12, each made with an ordinary push token against the real daemon, PostgreSQL and
SeaweedFS, each refused or harmless; afterwards stock Nix substitutes the victim's closure with signatures
checked. Every attack runs with a second push token ("intruder") and with the victim's own token ("pusher").
docs/security.md names the rule each test guards."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import zstandard

from niks3d.nix.bucketkeys import nar_key
from niks3d.nix.listing import render_listing
from niks3d.nix.nar_read import NarValidator
from niks3d.nix.storepath import StorePath
from tests.e2e.test_push import _sessions
from tests.security.kit import (
    ATTACKERS,
    ZSTD,
    assert_substitutable,
    file_report,
    junk_of_size,
    made_up,
    real_path,
    victim_pushes,
)
from tests.server.bucketview import bucket_keys, get_object, s3_client
from tests.server.pushkit import FakePath, PushKit, make_closure

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]


async def _put(http: aiohttp.ClientSession, spec: dict[str, Any], body: bytes) -> int:
    async with http.put(spec["url"], data=io.BytesIO(body), headers=spec["headers"]) as r:
        return r.status


def _objects(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for e in session["paths"] for o in e.get("objects", [])}


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_junk_claiming_another_paths_nar_hash_never_reaches_the_victim(
    start_daemon, nix_fixtures, tmp_path, capsys, attacker
):
    """Attack 1: a made-up path claims the victim's NarHash and uploads junk of the claimed size."""
    daemon = start_daemon()
    victim = real_path(nix_fixtures.protodep)

    async def attack() -> int:
        fake = made_up("poison", nar=victim.nar, nar_hash=victim.nar_hash)
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            session = await kit.open([fake], [fake])
            objects = _objects(session)
            junk = junk_of_size(len(ZSTD.compress(victim.nar)))
            assert await _put(http, objects["nar"], junk) == 200
            reports = {objects["nar"]["key"]: file_report(junk, nar=True)}
            answer = await kit.complete(session["session_id"], reports, expect=(200, 422))
            return 200 if answer.get("state") == "completed" else 422

    assert asyncio.run(attack()) == 422, "junk under a shared NAR key was accepted"
    victim_pushes(daemon, tmp_path, capsys, victim.path)
    assert_substitutable(daemon, tmp_path, victim.path)


def test_junk_reported_while_the_victim_uploads_its_nar_loses(start_daemon, nix_fixtures, tmp_path):
    """Attack 1 at the same time as the victim (another identity: one identity's sessions wait for each other).
    The attacker claims the victim's NarHash for a made-up path, stages junk of the claimed size, and reports it
    while the victim reports the real NAR. The victim is asked to upload at once (before, it waited for the
    attacker's claim, an hour here); the two reports are checked one after the other, the junk fails and is never
    published nor put over the victim's upload, and stock Nix substitutes the victim's path, signatures checked."""
    daemon = start_daemon(gc={"claim_lease": "1h"})
    victim = real_path(nix_fixtures.protodep)
    assert set(victim.references) <= {victim.path}, "the victim must be a leaf here"
    honest = FakePath(
        path=victim.path,
        nar=victim.nar,
        nar_hash=victim.nar_hash,
        listing=b'{"version":1,"root":{"type":"regular","size":1}}',
        references=victim.references,
    )

    async def race() -> tuple[Any, Any]:
        fake = made_up("poison", nar=victim.nar, nar_hash=victim.nar_hash)
        async with aiohttp.ClientSession() as http:
            attacker = PushKit(http, daemon.url, daemon.tokens["intruder"])
            kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
            hostile = await attacker.open([fake], [fake])
            objects = _objects(hostile)
            junk = junk_of_size(len(honest.compressed))
            assert await _put(http, objects["nar"], junk) == 200
            junk_reports = {objects["nar"]["key"]: file_report(junk, nar=True)}
            session = await kit.open([honest], [honest])
            assert _objects(session)["nar"]["action"] == "put", "the attacker's claim made the victim wait"
            reports = await kit.upload(session, [honest])

            async def victim_completes() -> Any:
                for _ in range(40):  # bounded: 20 s
                    answer = await kit.complete(session["session_id"], reports, expect=(200, 409))
                    if answer.get("state") == "completed":
                        return answer
                    await asyncio.sleep(0.5)
                raise AssertionError("the victim's complete never went through")

            return await asyncio.gather(
                attacker.complete(hostile["session_id"], junk_reports, expect=(200, 422)), victim_completes()
            )

    bad, good = asyncio.run(race())
    assert bad.get("error") == "objects_invalid", bad
    assert good["published"] == [victim.path]
    assert get_object(daemon.s3, _objects_key(victim))[0] == honest.compressed
    assert_substitutable(daemon, tmp_path, victim.path)


def _objects_key(victim: Any) -> str:
    return nar_key(victim.nar_hash, "zstd")


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_no_presigned_url_changes_a_published_object(start_daemon, nix_fixtures, tmp_path, capsys, attacker):
    """Attack 2: after `complete`, the same presigned PUT URLs are used again, with garbage of the same size."""
    daemon = start_daemon()
    victim = real_path(nix_fixtures.protodep)
    compressed = ZSTD.compress(victim.nar)

    async def attack() -> tuple[str, str, bytes]:
        fake = made_up("honest-looking", nar=victim.nar)
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            session = await kit.open([fake], [fake])
            objects = _objects(session)
            assert "ls" not in objects  # niks3d writes the listing (rule 8): no URL for it
            assert await _put(http, objects["nar"], compressed) == 200
            reports = {objects["nar"]["key"]: file_report(compressed, nar=True)}
            await kit.complete(session["session_id"], reports)
            await _put(http, objects["nar"], junk_of_size(len(compressed)))
            validator = NarValidator(listing=True)
            validator.feed(victim.nar)
            parsed = validator.finish().listing
            assert parsed is not None
            return objects["nar"]["key"], f"{fake.hash}.ls", render_listing(parsed)

    nar_key, ls_key, listing = asyncio.run(attack())
    assert get_object(daemon.s3, nar_key)[0] == compressed, "a published NAR was overwritten"
    assert get_object(daemon.s3, ls_key)[0] == listing
    victim_pushes(daemon, tmp_path, capsys, victim.path)  # its NAR is already there: dedup
    assert_substitutable(daemon, tmp_path, victim.path)
    # What the late PUTs wrote sits under the closed session's staging keys, which GC deletes.
    assert any(k.startswith("staging/") for k in bucket_keys(daemon.s3))
    asyncio.run(_collect(daemon, grace_period=0))
    assert not any(k.startswith("staging/") for k in bucket_keys(daemon.s3))


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_planted_build_log_is_refused_and_the_genuine_one_published(
    start_daemon, nix_fixtures, tmp_path, capsys, attacker
):
    """Attack 3: a made-up path whose deriver names the victim's .drv uploads "EVIL LOG" first."""
    daemon = start_daemon()
    drv = StorePath.parse(nix_fixtures.with_log_drv)
    log_key = f"log/{drv.basename}"
    genuine_drv = Path(drv.path).read_bytes()

    async def attack() -> int:
        fake = made_up("evil", nar=real_path(nix_fixtures.protodep).nar, deriver=drv.path)
        fake.log = b"EVIL LOG\n"
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            # The strongest version: the victim's genuine .drv file as "proof" (it hashes to the deriver).
            meta = {**fake.meta(), "derivation": base64.b64encode(genuine_drv).decode()}
            async with http.post(
                daemon.url + "/api/v1/sessions", json={"roots": [fake.path], "paths": [meta]}, headers=kit.auth
            ) as r:
                if r.status >= 400:
                    return r.status  # refused outright
                session = await r.json()
            (entry,) = session["paths"]
            assert "does not build" in entry.get("log_refused", ""), entry
            assert not any(o["kind"] == "log" for o in entry["objects"]), entry
            reports = await kit.upload(session, [fake])
            await kit.complete(session["session_id"], reports, expect=(200, 422))
            return 200

    asyncio.run(attack())
    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.with_log)
    body, _ = get_object(daemon.s3, log_key)
    log = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert b"EVIL LOG" not in log and b"fixture stdout line 1" in log, log[:200]
    assert_substitutable(daemon, tmp_path, nix_fixtures.with_log)


def test_a_session_belongs_to_the_token_that_opened_it(start_daemon, tmp_path):
    """Attack 4: another push token reads, gets URLs for, reports, completes and aborts the victim's session."""
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=12, n=2)

    async def attack() -> None:
        async with aiohttp.ClientSession() as http:
            victim = PushKit(http, daemon.url, daemon.tokens["pusher"])
            intruder = PushKit(http, daemon.url, daemon.tokens["intruder"])
            admin = PushKit(http, daemon.url, daemon.tokens["admin"])
            session = await victim.open(paths, paths[-1:])
            sid = session["session_id"]
            key = _objects(session)["nar"]["key"]
            base = f"/api/v1/sessions/{sid}"
            refusals = [
                await intruder.call("GET", base, expect=(200, 403)),
                await intruder.call("POST", base + "/urls", {"objects": [{"key": key}]}, expect=(200, 403)),
                await intruder.call("POST", base + "/objects", {"objects": {}}, expect=(200, 403, 400)),
                await intruder.call("POST", base + "/complete", {"objects": {}}, expect=(200, 403, 422)),
                await intruder.call("DELETE", base, expect=(200, 403)),
            ]
            for body in refusals:
                assert body.get("error") == "forbidden", body
                assert "intruder" in body["message"] and "session" in body["message"], body
            reports = await victim.upload(session, paths)
            await victim.complete(sid, reports)  # still the victim's, untouched
            # An admin may abort anyone's open session (one with something to upload: a push of cached paths
            # only is completed when it opens).
            fresh = make_closure(tmp_path, seed=13, n=1)
            other = await victim.open(fresh, fresh)
            assert (await admin.call("DELETE", f"/api/v1/sessions/{other['session_id']}"))["state"] == "aborted"

    asyncio.run(attack())


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_hash_part_taken_by_another_name_is_a_conflict(start_daemon, nix_fixtures, tmp_path, capsys, attacker):
    """Attack 5: `<hash>-othername` when the cache holds `<hash>-tricky` must not be answered "cached"."""
    daemon = start_daemon()
    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.tricky)
    tricky = StorePath.parse(nix_fixtures.tricky)
    other = f"/nix/store/{tricky.hash}-othername"

    async def attack() -> dict[str, Any]:
        fake = made_up("othername", nar=real_path(nix_fixtures.protodep).nar)
        fake.path = other
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            return await kit.open([fake], [fake], expect=(200, 201, 409))

    answer = asyncio.run(attack())
    assert answer.get("error") == "path_conflict", answer
    assert other in answer["message"] and nix_fixtures.tricky in answer["message"], answer

    async def roots() -> list[str]:
        conn = await asyncpg.connect(daemon.dsn)
        try:
            return [r["hash"] for r in await conn.fetch("SELECT hash FROM roots")]
        finally:
            await conn.close()

    assert asyncio.run(roots()) == [tricky.hash]
    assert_substitutable(daemon, tmp_path, nix_fixtures.tricky)


async def _collect(daemon: Any, **params: Any) -> dict[str, Any]:
    """One GC run through the API, followed to its end."""
    async with aiohttp.ClientSession() as http:
        collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        run = await collector.call("POST", "/api/v1/gc", params, expect=202)
        for _ in range(600):
            got: dict[str, Any] = await collector.call("GET", f"/api/v1/gc/{run['run_id']}")
            if got["state"] != "running":
                assert got["state"] == "finished", got
                return got
            await asyncio.sleep(0.1)
    raise AssertionError("gc did not finish")


async def _interrupted_complete(daemon: Any, token: str, paths: list[Any]) -> str:
    """A session whose `complete` wrote the narinfos and then died before the database commit: the daemon
    writes every narinfo of the push references first and commits afterwards (uploads/publish.py), so a
    SIGKILL between the two leaves exactly this state, which is what the test builds directly."""
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens[token])
        session = await kit.open(paths, paths[-1:])
        await kit.upload(session, paths)
    client = s3_client(daemon.s3)
    for p in paths:
        text = f"StorePath: {p.path}\nURL: nar/x.nar.zst\nCompression: zstd\nNarHash: sha256:x\nNarSize: 1\n"
        client.put_object(Bucket=daemon.s3.bucket, Key=f"{p.hash}.narinfo", Body=text.encode())
    return session["session_id"]


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_an_aborted_interrupted_session_leaves_no_narinfo(start_daemon, nix_fixtures, tmp_path, capsys, attacker):
    """Attack 6: the daemon dies during `complete`, and the session is aborted instead of completed again."""
    daemon = start_daemon()
    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.prototest)  # published before: must survive
    paths = make_closure(tmp_path, seed=66, n=4)

    async def abort(session_id: str) -> None:
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            await kit.call("DELETE", f"/api/v1/sessions/{session_id}")

    session_id = asyncio.run(_interrupted_complete(daemon, attacker, paths))
    asyncio.run(abort(session_id))
    left = {k for k in bucket_keys(daemon.s3) if k.endswith(".narinfo")}
    assert not {f"{p.hash}.narinfo" for p in paths} & left, left
    assert f"{StorePath.parse(nix_fixtures.prototest).hash}.narinfo" in left
    assert_substitutable(daemon, tmp_path, nix_fixtures.prototest)


def test_gc_of_an_expired_interrupted_session_removes_its_narinfos(start_daemon, nix_fixtures, tmp_path, capsys):
    """Attack 6, the other way out: nobody aborts; GC expires the session (within the grace period)."""
    daemon = start_daemon()
    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.prototest)
    paths = make_closure(tmp_path, seed=67, n=3)
    asyncio.run(_interrupted_complete(daemon, "intruder", paths))

    async def expire_and_collect() -> None:
        conn = await asyncpg.connect(daemon.dsn)
        try:
            await conn.execute("UPDATE upload_sessions SET expires_at = now() - interval '1 second'")
        finally:
            await conn.close()
        await _collect(daemon)

    asyncio.run(expire_and_collect())
    assert "expired" in asyncio.run(_sessions(daemon.dsn))
    left = {k for k in bucket_keys(daemon.s3) if k.endswith(".narinfo")}
    assert not {f"{p.hash}.narinfo" for p in paths} & left, left
    assert_substitutable(daemon, tmp_path, nix_fixtures.prototest)
