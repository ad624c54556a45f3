"""Realisations under attack (docs/security.md, rule 7): a writer with an ordinary push token tries to re-point the
victim's published realisations at an output of its own, first with a second push token ("intruder"), then with
the victim's own ("pusher"). A modern Nix then builds the victim's content-addressed derivation with
``--max-jobs 0``, so it can only substitute it through the cache's realisations, signatures checked."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

import aiohttp
import pytest

from niks3d.nix.hashes import format_sha256
from niks3d.nix.nar import nar_str
from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.storepath import StorePath
from tests.e2e.test_modern_nix import CA_EXPR, _build, _keys, _push, _reader, _substitute, _write
from tests.security.kit import ATTACKERS, made_up
from tests.server.bucketview import bucket_keys, get_object
from tests.server.pushkit import PushKit

pytestmark = [pytest.mark.modern_nix, pytest.mark.postgres, pytest.mark.s3]


def _file_nar(contents: bytes) -> bytes:
    """The NAR of a single regular file: a valid NAR of the attacker's choosing."""
    fields = [b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")"]
    return b"".join(nar_str(f) for f in fields)


def _realisations(daemon: Any) -> dict[str, dict[str, Any]]:
    """Both layouts: ``realisations/`` and Nix 2.35's ``build-trace-v2/``."""
    keys = [k for k in bucket_keys(daemon.s3) if k.startswith(("realisations/", "build-trace-v2/"))]
    return {k: json.loads(get_object(daemon.s3, k)[0]) for k in keys}


def _trace_id(key: str) -> str:
    """``build-trace-v2/<drv>/<output>.doi`` as the id the answer names it by, ``<drv>^<output>``."""
    return key.removeprefix("build-trace-v2/").removesuffix(".doi").replace("/", "^")


async def _repoint(daemon: Any, token: str, ids: list[str], name: str, deriver: str, drv: bytes) -> dict[str, Any]:
    """Publish a made-up path (a valid NAR of its own) that claims every one of ``ids`` as its realisation, and
    the victim's ``deriver`` as its own, with its genuine .drv (so its build-trace entry would be the victim's)."""
    fake = made_up(name, nar=_file_nar(secrets.token_bytes(8) + b" is not what the victim built"))
    realisations = [{"id": i, "out_path": fake.path} for i in ids]
    meta = {
        **fake.meta(),
        "deriver": deriver,
        "realisations": realisations,
        "derivation": base64.b64encode(drv).decode(),
    }
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens[token])
        session = await kit.call("POST", "/api/v1/sessions", {"roots": [fake.path], "paths": [meta]}, expect=201)
        reports = await kit.upload(session, [fake])
        answer: dict[str, Any] = await kit.complete(session["session_id"], reports)
    return answer


async def _open_and_complete(daemon: Any, token: str, meta: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens[token])
        session = await kit.call("POST", "/api/v1/sessions", {"roots": [meta["path"]], "paths": [meta]}, expect=201)
        answer: dict[str, Any] = await kit.complete(session["session_id"], {})
    return answer


def test_a_published_realisation_is_never_repointed(start_daemon, modern_nix, tmp_path):
    daemon = start_daemon()
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ca.nix", CA_EXPR)
    out = _build(modern_nix, expr, salt)
    _push(modern_nix, daemon, tmp_path, out)
    before = _realisations(daemon)
    assert before and out.removeprefix("/nix/store/") in {r["outPath"] for r in before.values()}
    ids = sorted(r["id"] for k, r in before.items() if k.startswith("realisations/"))
    top = modern_nix.run(["nix-store", "--query", "--deriver", out]).stdout.decode().strip()
    top_trace = f"build-trace-v2/{top.removeprefix('/nix/store/')}/out.doi"
    assert len(before) == len(ids) + 2 and top_trace in before, sorted(before)

    for attacker in ATTACKERS:
        drv = modern_nix.host_path(top).read_bytes()
        answer = asyncio.run(_repoint(daemon, attacker, ids, f"modern-catop-{attacker}", top, drv))
        assert len(answer["published"]) == 1, answer  # the made-up path itself is new: it is published
        assert _realisations(daemon) == before, f"{attacker} re-pointed a published realisation"
        refused = answer.get("realisations_refused", [])
        assert sorted(r["id"] for r in refused) == sorted([*ids, _trace_id(top_trace)]), answer
        held = {f"/nix/store/{b['outPath']}" for b in before.values()}
        assert all(r["published"] in held and "already" in r["reason"] for r in refused), refused

    # A realisation for a derivation of the attacker's naming, pointing at the victim's (cached) output: the
    # session publishes nothing, so it writes no realisation either (a guard: this held before rule 7 too).
    info = parse_narinfo(get_object(daemon.s3, f"{StorePath.parse(out).hash}.narinfo")[0])
    made_up_id = f"sha256:{secrets.token_hex(32)}!out"
    meta = {
        "path": out,
        "nar_hash": format_sha256(info.nar_hash),
        "nar_size": info.nar_size,
        "references": [f"/nix/store/{r}" for r in info.references],
        "realisations": [{"id": made_up_id, "out_path": out}],
    }
    made_up_drv = f"/nix/store/{StorePath.parse(out).hash[:31]}a-not-the-victims.drv"
    answer = asyncio.run(_open_and_complete(daemon, "intruder", {**meta, "deriver": made_up_drv}))
    assert answer["cached"] == [out] and not answer["published"], answer
    assert _realisations(daemon) == before

    reader = _reader(tmp_path, modern_nix)
    assert _substitute(reader, expr, salt, f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}", _keys(daemon)) == out
    assert reader.host_path(out).read_bytes() == modern_nix.host_path(out).read_bytes()
