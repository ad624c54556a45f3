"""Build logs of floating content-addressed derivations (docs/security.md, rules 3 and 7).

Such a ``.drv`` names no output path, so its log is proven only by a realisation that niks3d publishes binding one
of its outputs to the pushed path: the build-trace entry ``build-trace-v2/<drv>/<output>.doi``, written when the
push sends a realisation whose id is the derivation's hash modulo (computed by niks3d from the ``.drv``). A modern
Nix (Debian 13's 2.26, or sid's with ``NIKS3_MODERN_NIX_SUITE=sid``) builds a CA closure whose top prints a log;
an intruder then names the victim's ``.drv`` (its genuine file) for made-up paths of its own, before and after
the victim pushes, with a realisation for another id and with the victim's own ids. The last test needs no Nix: a
.drv of its own making, whose realisation id niks3d's hash modulo gives (tests/nix/test_drvhash.py checks that
against Nix).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import zstandard

from niks3d.nix.derivation import parse_derivation, text_store_path
from niks3d.nix.drvhash import realisation_ids
from niks3d.nix.storepath import StorePath
from testkit.modernnix import ModernNix
from testkit.nixfixtures import CA_MK
from tests.e2e.test_modern_nix import _build, _keys, _reader, _substitute, _write
from tests.security.kit import made_up, put_log
from tests.security.test_hostile_realisations import _file_nar
from tests.security.test_proven_logs import _unprove
from tests.server.bucketview import bucket_keys, get_object
from tests.server.pushkit import ZSTD, PushKit

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

LOG_EXPR = (
    "{ salt }:\nlet\n"
    + CA_MK
    + """\
  dep = mk "ca-logdep" "echo ca dependency $salt > $out";
in mk "ca-logtop" "echo genuine ca log line; echo ${dep} $salt > $out"
"""
)


def _log(daemon: Any, key: str) -> bytes | None:
    if key not in bucket_keys(daemon.s3):
        return None
    body, _ = get_object(daemon.s3, key)
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)


async def _proven(dsn: str, key: str) -> bool | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: bool | None = await conn.fetchval("SELECT proven FROM objects WHERE key = $1", key)
        return value
    finally:
        await conn.close()


async def _intruder_pushes(daemon: Any, name: str, drv: str, drv_file: bytes, ids: list[str]) -> dict[str, Any]:
    """A made-up path of the intruder's, naming the victim's .drv (with its genuine file) as its deriver, with a log
    "INTRUDER LOG" and realisations ``ids`` naming the made-up path; returns the open's entry and complete's
    answer."""
    fake = made_up(name, nar=_file_nar(secrets.token_bytes(8) + b" is not what the victim built"), deriver=drv)
    fake.log, fake.derivation = b"INTRUDER LOG\n", drv_file
    meta = {**fake.meta(), "realisations": [{"id": i, "out_path": fake.path} for i in ids]}
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["intruder"])
        session = await kit.call("POST", "/api/v1/sessions", {"roots": [fake.path], "paths": [meta]}, expect=201)
        reports = await kit.upload(session, [fake])
        answer = await kit.complete(session["session_id"], reports)
    return {"entry": session["paths"][0], "answer": answer}


def _push_as(nix: ModernNix, daemon: Any, tmp_path: Path, token: str, *paths: str) -> dict[str, Any]:
    file = tmp_path / f"{token}-token"
    file.write_text(daemon.tokens[token] + "\n")
    file.chmod(0o600)
    out = nix.niks3("push", "--json", "--no-progress", "--server", daemon.url, "--token-file", str(file), *paths)
    doc: dict[str, Any] = json.loads(out)
    return doc


def _trace(daemon: Any, drv: str) -> dict[str, Any] | None:
    key = f"build-trace-v2/{drv.removeprefix('/nix/store/')}/out.doi"
    return json.loads(get_object(daemon.s3, key)[0]) if key in bucket_keys(daemon.s3) else None


@pytest.mark.modern_nix
def test_the_log_of_a_content_addressed_derivation_goes_with_its_realisation(
    start_daemon, modern_nix: ModernNix, tmp_path: Path
) -> None:
    daemon = start_daemon()
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "calog.nix", LOG_EXPR)
    out = _build(modern_nix, expr, salt)
    drv = modern_nix.run(["nix-store", "--query", "--deriver", out]).stdout.decode().strip()
    drv_file = modern_nix.host_path(drv).read_bytes()
    assert b'("out","","r:sha256","")' in drv_file  # floating: the .drv names no output path
    key = f"log/{StorePath.parse(drv).basename}"

    # Before the victim: a realisation for another id (one of the intruder's making) proves nothing.
    other = f"sha256:{secrets.token_hex(32)}!out"
    tried = asyncio.run(_intruder_pushes(daemon, "ca-logtop-early", drv, drv_file, [other]))
    assert tried["entry"].get("log_refused"), tried
    assert _log(daemon, key) is None and _trace(daemon, drv) is None

    _push_as(modern_nix, daemon, tmp_path, "pusher", out)
    genuine = _log(daemon, key)
    assert genuine is not None and b"genuine ca log line" in genuine, genuine
    assert asyncio.run(_proven(daemon.dsn, key)) is True
    trace = _trace(daemon, drv)
    assert trace is not None and trace["outPath"] == out.removeprefix("/nix/store/"), trace

    # After the victim: the victim's own ids, for a made-up path naming its .drv. The realisations stay the
    # victim's (rule 7), and so does the log.
    ids = sorted(json.loads(get_object(daemon.s3, k)[0])["id"] for k in bucket_keys(daemon.s3) if "!" in k)
    late = asyncio.run(_intruder_pushes(daemon, "ca-logtop-late", drv, drv_file, ids))
    refused = {r["id"] for r in late["answer"].get("realisations_refused", [])}
    assert f"{drv.removeprefix('/nix/store/')}^out" in refused, late
    assert _log(daemon, key) == genuine and _trace(daemon, drv) == trace

    # The log turns into one never proven (as from before schema version 7) while the path is cached. The
    # intruder's made-up path with the victim's ids is refused it where its log would be put in place (the
    # realisation names the victim's output), and the intruder's re-push of the victim's path is asked for
    # nothing; the victim's re-push replaces it.
    asyncio.run(_unprove(daemon, key))
    again = asyncio.run(_intruder_pushes(daemon, "ca-logtop-later", drv, drv_file, ids))
    assert len(again["answer"]["published"]) == 1, again
    assert _log(daemon, key) == b"EVIL LOG\n" and asyncio.run(_proven(daemon.dsn, key)) is False
    assert out in _push_as(modern_nix, daemon, tmp_path, "intruder", out)["cached"]
    assert _log(daemon, key) == b"EVIL LOG\n" and asyncio.run(_proven(daemon.dsn, key)) is False
    assert out in _push_as(modern_nix, daemon, tmp_path, "pusher", out)["cached"]
    assert _log(daemon, key) == genuine and asyncio.run(_proven(daemon.dsn, key)) is True

    reader = _reader(tmp_path, modern_nix)
    assert _substitute(reader, expr, salt, f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}", _keys(daemon)) == out
    assert "genuine ca log line" in reader.nix("log", "--store", f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}", drv)


def _floating_drv(salt: str) -> tuple[str, bytes]:
    """A floating content-addressed .drv of no inputs (as Nix writes a resolved one), and its store path."""
    text = (
        'Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",["-c","echo ' + salt + ' > $out"],'
        '[("out","/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9")])'
    ).encode()
    return text_store_path(f"syn-{salt}.drv", text, []).path, text


async def _push_made_up(daemon: Any, token: str, fake: Any, rid: str | None, *, insist: bool = False) -> dict[str, Any]:
    """Push ``fake`` with the realisation ``rid`` (and its .drv); ``insist``: upload its log even if not asked,
    through a URL asked for by key (``POST .../urls``), as a hostile client would."""
    meta = fake.meta()
    if rid is not None:
        meta["realisations"] = [{"id": rid, "out_path": fake.path}]
        meta["derivation"] = base64.b64encode(fake.derivation).decode()  # sent for the realisation, log or not
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens[token])
        session = await kit.call("POST", "/api/v1/sessions", {"roots": [fake.path], "paths": [meta]}, expect=201)
        reports = await kit.upload(session, [fake])
        if insist:
            key = f"log/{StorePath.parse(fake.deriver).basename}"
            urls = await kit.call("POST", f"/api/v1/sessions/{session['session_id']}/urls", {"objects": [{"key": key}]})
            body = ZSTD.compress(fake.log)
            await kit.put(urls["objects"][0], body)
            reports[key] = {"file_size": len(body)}
        return {"session": session, "answer": await kit.complete(session["session_id"], reports)}


def test_a_log_whose_realisation_names_another_path_is_refused_and_the_path_published(start_daemon) -> None:
    """The victim's output of a CA derivation is published with its realisation but no log; then a push of another
    output for the same derivation (the intruder's, or an honest build that came out different) is told at the open
    that its log is refused. Uploaded anyway, its report finds the realisation taken: the log is refused, not put in
    place, and complete publishes the path without it (instead of asking for the log again)."""
    daemon = start_daemon()
    drv, drv_file = _floating_drv(secrets.token_hex(6))
    rid = realisation_ids(parse_derivation(drv_file), {})["out"]
    victim = made_up("syn-victim", nar=_file_nar(secrets.token_bytes(8)), deriver=drv)
    victim.derivation = drv_file
    first = asyncio.run(_push_made_up(daemon, "pusher", victim, rid))
    assert first["answer"]["published"] == [victim.path] and "realisations_refused" not in first["answer"], first
    key = f"log/{StorePath.parse(drv).basename}"
    published = _trace(daemon, drv)
    assert published is not None and published["outPath"] == victim.path.removeprefix("/nix/store/"), published

    other = made_up("syn-other", nar=_file_nar(secrets.token_bytes(8)), deriver=drv)
    other.log, other.derivation = b"INTRUDER LOG\n", drv_file
    second = asyncio.run(_push_made_up(daemon, "intruder", other, rid, insist=True))
    entry = second["session"]["paths"][0]
    assert key not in [o["key"] for o in entry["objects"]] and "log refused" in entry["log_refused"], entry
    # the log was uploaded anyway (as if the realisation were published after the open): its report refuses it
    assert second["answer"]["published"] == [other.path], second
    assert {r["id"] for r in second["answer"]["realisations_refused"]} == {rid, f"{StorePath.parse(drv).basename}^out"}
    assert _log(daemon, key) is None
    assert _trace(daemon, drv) == published


def test_a_stock_log_put_for_a_content_addressed_derivation_goes_with_its_realisation(start_daemon) -> None:
    """``nix store copy-log`` (a plain PUT) of a floating CA derivation's log, with its .drv in the cache: its
    outputs are what its realisation names, so the output's publisher may put the log, and nobody else."""
    daemon = start_daemon()
    drv, drv_file = _floating_drv(secrets.token_hex(6))
    rid = realisation_ids(parse_derivation(drv_file), {})["out"]
    basename = StorePath.parse(drv).basename
    status, text = put_log(daemon, "pusher", basename, b"too early\n")
    assert status == 422 and "not in this cache" in text, (status, text)  # nor is its .drv

    victim = made_up("syn-stock", nar=_file_nar(secrets.token_bytes(8)), deriver=drv)
    victim.derivation = drv_file
    asyncio.run(_push_made_up(daemon, "pusher", victim, rid))
    copied = made_up("unused", nar=_file_nar(drv_file))
    copied.path = drv  # nix copy --to <cache> --derivation: the .drv as a store path of one regular file
    assert asyncio.run(_push_made_up(daemon, "pusher", copied, None))["answer"]["published"] == [drv]

    status, text = put_log(daemon, "intruder", basename, b"EVIL LOG\n")
    assert status == 422 and "another identity" in text, (status, text)
    status, text = put_log(daemon, "pusher", basename, b"genuine ca log\n")
    assert status == 201, (status, text)
    assert _log(daemon, f"log/{basename}") == b"genuine ca log\n"
    assert asyncio.run(_proven(daemon.dsn, f"log/{basename}")) is True
