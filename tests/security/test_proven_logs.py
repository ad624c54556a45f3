"""A genuine build log replaces a log that was never proven; an unproven one never replaces anything
(docs/security.md, rule 3; migration 0007).

A log that got in without its proof (a token marked trusted is spared it; every log from before schema
version 7 is marked unproven) is "EVIL LOG" here, planted for the victim's derivation before the victim pushes.
The victim's `niks3 push`, which sends the .drv, must then publish its genuine log in place of it, and nobody
without the proof may change it afterwards. Real daemon, PostgreSQL, SeaweedFS and `nix`.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import zstandard

from niks3d.nix.hashes import format_sha256
from niks3d.nix.storepath import StorePath
from tests.client.storekit import delete
from tests.e2e.test_nix_copy_to import build_closure, copy_from, copy_to, netrc, nix
from tests.e2e.test_push import _push
from tests.security.kit import ZSTD, assert_substitutable, made_up, put_log, real_path, victim_pushes
from tests.server.bucketview import get_object, s3_client
from tests.server.pushkit import PushKit

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]


def _log(daemon: Any, key: str) -> bytes:
    body, _ = get_object(daemon.s3, key)
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)


async def _proven(dsn: str, key: str) -> bool | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: bool | None = await conn.fetchval("SELECT proven FROM objects WHERE key = $1", key)
        return value
    finally:
        await conn.close()


async def _publish_evil(daemon: Any, nix_fixtures: Any, drv: StorePath) -> str:
    """The intruder publishes a made-up path whose deriver is the victim's .drv (without a log: it has no proof),
    so that a log for that .drv has a path to live with. Returns the made-up path's hash part."""
    fake = made_up("evil", nar=real_path(nix_fixtures.protodep).nar, deriver=drv.path)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["intruder"])
        session = await kit.open([fake], [fake])
        await kit.complete(session["session_id"], await kit.upload(session, [fake]))
    return StorePath.parse(fake.path).hash


async def _plant_as_before_0007(daemon: Any, key: str, owner: str) -> None:
    """What a log published before schema version 7 looks like after the migration: in the bucket, present, owned
    by a path, and not proven (nothing recorded whether it was)."""
    body = ZSTD.compress(b"EVIL LOG\n")
    s3_client(daemon.s3).put_object(
        Bucket=daemon.s3.bucket, Key=key, Body=body, ContentType="text/plain; charset=utf-8", ContentEncoding="zstd"
    )
    conn = await asyncpg.connect(daemon.dsn)
    try:
        await conn.execute(
            """INSERT INTO objects (key, kind, state, size, present_at, file_hash)
               VALUES ($1, 'log', 'present', $2, now(), $3)""",
            key,
            len(body),
            format_sha256(hashlib.sha256(body).digest()),
        )
        await conn.execute("INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, 'log')", owner, key)
    finally:
        await conn.close()


@pytest.mark.parametrize("planted", ["trusted_put", "before_0007"])
def test_the_victims_proven_push_replaces_a_log_never_proven(start_daemon, nix_fixtures, tmp_path, capsys, planted):
    daemon = start_daemon()
    drv = StorePath.parse(nix_fixtures.with_log_drv)
    key = f"log/{drv.basename}"
    owner = asyncio.run(_publish_evil(daemon, nix_fixtures, drv))
    if planted == "trusted_put":
        # A trusted token is spared the proof (s3.verify = "size"): its log goes in, unproven.
        status, text = put_log(daemon, "trusted", drv.basename, b"EVIL LOG\n")
        assert status == 201, (status, text)
    else:
        asyncio.run(_plant_as_before_0007(daemon, key, owner))
    assert b"EVIL LOG" in _log(daemon, key)
    assert asyncio.run(_proven(daemon.dsn, key)) is False

    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.with_log)
    genuine = _log(daemon, key)
    assert b"EVIL LOG" not in genuine and b"fixture stdout line 1" in genuine, genuine[:200]
    assert asyncio.run(_proven(daemon.dsn, key)) is True

    # Once proven, the log is immutable for writers without the proof, trusted or not.
    for token in ("trusted", "intruder"):
        status, text = put_log(daemon, token, drv.basename, b"EVIL LOG AGAIN\n")
        assert status in (409, 422), (token, status, text)
    assert _log(daemon, key) == genuine
    assert_substitutable(daemon, tmp_path, nix_fixtures.with_log)


def test_a_stock_copy_log_with_its_proof_replaces_a_log_never_proven(start_daemon, tmp_path, request):
    """The same through stock Nix: the victim publishes with `nix copy --to`, a trusted token PUTs "EVIL LOG" for
    its derivation (spared the proof), and the victim's `nix store copy-log`, with the .drv in the cache, replaces
    it; the trusted token cannot put its log back."""
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=1000)
    request.addfinalizer(lambda: delete(top, dep))
    drv_path = subprocess.run(["nix-store", "-q", "--deriver", top], capture_output=True, text=True, check=True)
    drv = StorePath.parse(drv_path.stdout.strip())
    key = f"log/{drv.basename}"
    url = f"{daemon.url}/?compression=zstd"
    assert copy_to(tmp_path, daemon, url, top).returncode == 0
    status, text = put_log(daemon, "trusted", drv.basename, b"EVIL LOG\n")
    assert status == 201, (status, text)
    assert asyncio.run(_proven(daemon.dsn, key)) is False

    assert copy_to(tmp_path, daemon, url, "--derivation", drv.path).returncode == 0
    done = nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=netrc(tmp_path, daemon, "pusher"))
    assert done.returncode == 0, done.stderr
    assert asyncio.run(_proven(daemon.dsn, key)) is True
    status, text = put_log(daemon, "trusted", drv.basename, b"EVIL LOG AGAIN\n")
    assert status == 409 and "immutable" in text, (status, text)
    got = nix(tmp_path, "log", "--store", daemon.url, top)
    assert got.returncode == 0 and "building the top" in got.stdout and "EVIL" not in got.stdout, got
    copied, _ = copy_from(tmp_path, daemon, top)
    assert copied.returncode == 0, copied.stderr


async def _unprove(daemon: Any, key: str) -> None:
    """The published log of ``key`` becomes "EVIL LOG", never proven: what a log from before schema version 7 is
    after the migration (its row and owners stay)."""
    body = ZSTD.compress(b"EVIL LOG\n")
    s3_client(daemon.s3).put_object(
        Bucket=daemon.s3.bucket, Key=key, Body=body, ContentType="text/plain; charset=utf-8", ContentEncoding="zstd"
    )
    conn = await asyncpg.connect(daemon.dsn)
    try:
        await conn.execute(
            "UPDATE objects SET proven = false, size = $2, file_hash = $3 WHERE key = $1",
            key,
            len(body),
            format_sha256(hashlib.sha256(body).digest()),
        )
    finally:
        await conn.close()


async def _stranger_offers(daemon: Any, path: str, drv: StorePath, log: bytes) -> dict[str, Any]:
    """Another token opens a push of the cached ``path`` offering ``log`` with the genuine .drv: the answer's
    entry for it."""
    real = real_path(path)
    fake = made_up("unused", nar=real.nar, deriver=drv.path)
    fake.path, fake.references, fake.log = path, real.references, log
    fake.derivation = Path(drv.path).read_bytes()  # noqa: ASYNC240 (a few KB)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["intruder"])
        session = await kit.open([fake], [fake])
        entry: dict[str, Any] = session["paths"][0]
        # nothing to upload: the session completed as it opened (409 to an abort), or is aborted here
        await kit.call("DELETE", f"/api/v1/sessions/{session['session_id']}", expect=(200, 204, 409))
    return entry


@pytest.mark.parametrize("planted", ["trusted_put", "before_0007"])
def test_the_publishers_push_of_a_cached_path_replaces_its_log_never_proven(
    start_daemon, nix_fixtures, tmp_path, capsys, planted
):
    """Item 2 of rule 3's replacement: the path is cached, its log is not proven; only its publisher's re-push
    (with the .drv) replaces it, and a stranger's re-push is asked for nothing, before and after."""
    daemon = start_daemon()
    path = nix_fixtures.with_log
    drv = StorePath.parse(nix_fixtures.with_log_drv)
    key = f"log/{drv.basename}"
    if planted == "trusted_put":
        # published without its log; a trusted token (spared the proof) puts one in, unproven
        code, _, err = _push(daemon, tmp_path, capsys, "--no-logs", path)
        assert code == 0, err
        status, text = put_log(daemon, "trusted", drv.basename, b"EVIL LOG\n")
        assert status == 201, (status, text)
    else:
        victim_pushes(daemon, tmp_path, capsys, path)
        asyncio.run(_unprove(daemon, key))
    assert _log(daemon, key) == b"EVIL LOG\n" and asyncio.run(_proven(daemon.dsn, key)) is False

    code, doc, err = _push(daemon, tmp_path, capsys, path, token="intruder")
    assert code == 0 and path in doc["cached"], (err, doc)
    assert _log(daemon, key) == b"EVIL LOG\n" and asyncio.run(_proven(daemon.dsn, key)) is False

    doc = victim_pushes(daemon, tmp_path, capsys, path)
    assert path in doc["cached"], doc
    genuine = _log(daemon, key)
    assert b"EVIL LOG" not in genuine and b"fixture stdout line 1" in genuine, genuine[:200]
    assert asyncio.run(_proven(daemon.dsn, key)) is True

    entry = asyncio.run(_stranger_offers(daemon, path, drv, b"EVIL LOG AGAIN\n"))
    assert entry == {"path": path, "status": "cached"}, entry
    assert _log(daemon, key) == genuine
    assert_substitutable(daemon, tmp_path, path)
