"""Upstream references through the HTTP API: a push leans on paths an upstream cache signed instead of uploading
them; niks3d checks the signature itself, records the path as upstream, and GC forgets the record with its last
referrer. Forged, missing or mismatched proofs are refused and write nothing."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.signing import SecretKey, fingerprint
from tests.server.bucketview import bucket_keys, get_object, table_counts
from tests.server.pushkit import FakePath, PushKit, make_path

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

UPSTREAM = SecretKey.generate("upstream-test-1")


def upstream_entry(p: FakePath, key: SecretKey = UPSTREAM, **changes: Any) -> dict[str, Any]:
    """What a client sends for a reference it does not push: the facts and the upstream signature over them."""
    sig = key.sign(fingerprint(p.path, p.nar_hash, len(p.nar), p.references))
    entry = {**p.meta(), "signatures": [sig]}
    for name in ("deriver", "ca", "listing", "log"):
        entry.pop(name)
    entry.update(changes)
    return entry


def _scene(tmp_path: Path, seed: int) -> tuple[FakePath, FakePath, FakePath]:
    """``lib`` (upstream's, referencing ``base``, also upstream's) and ``app`` built on it."""
    rng = random.Random(seed)
    base = make_path(tmp_path, rng, "base")
    lib = make_path(tmp_path, rng, "lib", references=[base.path])
    app = make_path(tmp_path, rng, "app", references=[lib.path])
    return base, lib, app


async def _upstream_rows(dsn: str) -> tuple[list[str], list[tuple[str, str]]]:
    conn = await asyncpg.connect(dsn)
    try:
        records = [r["hash"] for r in await conn.fetch("SELECT hash FROM upstream_paths ORDER BY hash")]
        refs = [(r["referrer"], r["reference"]) for r in await conn.fetch("SELECT * FROM upstream_references")]
        return records, refs
    finally:
        await conn.close()


def _daemon(start_daemon: Any) -> Any:
    return start_daemon(cache={"upstream_keys": [UPSTREAM.public_key().to_text()]})


async def test_a_push_leaning_on_upstream_uploads_only_its_own_paths(start_daemon: Any, tmp_path: Path) -> None:
    daemon = _daemon(start_daemon)
    _, lib, app = _scene(tmp_path, seed=1)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        info = await kit.call("GET", "/api/v1/info")
        assert "upstream" in info["capabilities"]
        assert info["upstream_keys"] == [UPSTREAM.public_key().to_text()]
        body = {"roots": [app.path], "paths": [app.meta()], "upstream": [upstream_entry(lib)]}
        session = await kit.call("POST", "/api/v1/sessions", body, expect=201)
        assert [e["path"] for e in session["paths"]] == [app.path]
        result = await kit.complete(session["session_id"], await kit.upload(session, [app]))
    assert result["published"] == [app.path] and result["upstream"] == [lib.path]
    keys = bucket_keys(daemon.s3)
    assert not any(lib.hash in k for k in keys), "nothing of the upstream path is in the bucket"
    assert f"{app.hash}.narinfo" in keys
    text, _ = get_object(daemon.s3, f"{app.hash}.narinfo")
    narinfo = parse_narinfo(text, expected_hash=app.hash)
    assert [f"/nix/store/{r}" for r in narinfo.references] == [lib.path]
    assert any(k.public_key().verify(s, narinfo.fingerprint()) for k in daemon.signing_keys for s in narinfo.sigs)
    records, refs = await _upstream_rows(daemon.dsn)
    assert records == [lib.hash] and refs == [(app.hash, lib.hash)]
    counts = await table_counts(daemon.dsn)
    assert counts["store_paths"] == 1 and counts["path_references"] == 0


async def test_a_reference_that_is_neither_pushed_nor_cached_nor_upstream_is_refused(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = _daemon(start_daemon)
    base, lib, app = _scene(tmp_path, seed=2)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        # lib is pushed; base, its reference, is neither in the push, nor cached, nor named as upstream.
        body = {"roots": [app.path], "paths": [app.meta(), lib.meta()]}
        answer = await kit.call("POST", "/api/v1/sessions", body, expect=422)
        assert answer["error"] == "unknown_references" and answer["references"] == [base.path]
        # named as upstream, it is accepted: the closure leans on upstream below lib.
        body["upstream"] = [upstream_entry(base)]
        session = await kit.call("POST", "/api/v1/sessions", body, expect=201)
        result = await kit.complete(session["session_id"], await kit.upload(session, [app, lib]))
    assert sorted(result["published"]) == sorted([app.path, lib.path]) and result["upstream"] == [base.path]


def _tampered(lib: FakePath) -> dict[str, dict[str, Any]]:
    forger = SecretKey.generate(UPSTREAM.name)  # the right name, the wrong key
    stranger = SecretKey.generate("someone-else-1")
    good = upstream_entry(lib)
    return {
        "forged": upstream_entry(lib, forger),
        "unknown key": upstream_entry(lib, stranger),
        "NarSize changed": {**good, "nar_size": good["nar_size"] + 1},
        "NarHash changed": {**good, "nar_hash": "sha256:" + "1" * 52},
        "references changed": {**good, "references": []},
        "signature of another path": {
            **good,
            "signatures": [UPSTREAM.sign(fingerprint(lib.references[0], lib.nar_hash, len(lib.nar), []))],
        },
    }


@pytest.mark.parametrize(
    "case",
    [
        "forged",
        "unknown key",
        "NarSize changed",
        "NarHash changed",
        "references changed",
        "signature of another path",
    ],
)
async def test_an_unproven_upstream_reference_is_refused_and_nothing_is_written(
    start_daemon: Any, tmp_path: Path, case: str
) -> None:
    daemon = _daemon(start_daemon)
    _, lib, app = _scene(tmp_path, seed=3)
    entry = _tampered(lib)[case]
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        body = {"roots": [app.path], "paths": [app.meta()], "upstream": [entry]}
        answer = await kit.call("POST", "/api/v1/sessions", body, expect=422)
    assert answer["error"] == "upstream_unproven", answer
    assert answer["upstream"][0]["path"] == lib.path and lib.path in answer["message"]
    counts = await table_counts(daemon.dsn)
    assert all(n == 0 for n in counts.values()), counts
    assert await _upstream_rows(daemon.dsn) == ([], [])
    assert bucket_keys(daemon.s3) <= {"nix-cache-info"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signatures": []}, "must not be empty"),
        ("no signatures", "missing field(s) 'signatures'"),
        ({"signatures": ["upstream-test-1:not base64!"]}, "is malformed"),
        ({"signatures": ["upstream-test-1:" + "A" * 20]}, "an Ed25519 signature is 64"),
        ({"path": "/nix/store/../etc/passwd"}, "upstream[0].path"),
        ({"nar_size": 0}, "out of range"),
        ({"extra": 1}, "unknown field(s) 'extra'"),
    ],
)
async def test_a_malformed_upstream_entry_is_a_400(
    daemon_for_upstream: Any, tmp_path: Path, change: Any, message: str
) -> None:
    _, lib, app = _scene(tmp_path, seed=4)
    entry = upstream_entry(lib)
    if change == "no signatures":
        del entry["signatures"]
    else:
        entry.update(change)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon_for_upstream.url, daemon_for_upstream.tokens["pusher"])
        body = {"roots": [app.path], "paths": [app.meta()], "upstream": [entry]}
        answer = await kit.call("POST", "/api/v1/sessions", body, expect=400)
    assert answer["error"] == "invalid_request" and message in answer["message"], answer
    assert (await table_counts(daemon_for_upstream.dsn))["upload_sessions"] == 0


async def test_upstream_entries_must_be_references_the_push_does_not_upload(
    daemon_for_upstream: Any, tmp_path: Path
) -> None:
    base, lib, app = _scene(tmp_path, seed=5)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon_for_upstream.url, daemon_for_upstream.tokens["pusher"])
        cases = {
            "is not a reference of any path": [upstream_entry(lib), upstream_entry(base)],
            "is one of the paths of this push": [upstream_entry(lib)],
            "is listed twice": [upstream_entry(lib), upstream_entry(lib)],
        }
        for message, entries in cases.items():
            paths = [app.meta()] + ([lib.meta()] if message.startswith("is one of") else [])
            body = {"roots": [app.path], "paths": paths, "upstream": entries}
            answer = await kit.call("POST", "/api/v1/sessions", body, expect=400)
            assert message in answer["message"], answer


async def test_without_upstream_keys_nothing_counts_as_upstream(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(cache={"upstream_keys": []})
    _, lib, app = _scene(tmp_path, seed=6)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        assert (await kit.call("GET", "/api/v1/info"))["upstream_keys"] == []
        body = {"roots": [app.path], "paths": [app.meta()], "upstream": [upstream_entry(lib)]}
        answer = await kit.call("POST", "/api/v1/sessions", body, expect=422)
    assert answer["error"] == "upstream_unproven" and "trusts no upstream keys" in answer["message"]
    assert (await table_counts(daemon.dsn))["upload_sessions"] == 0


async def _gc(kit: PushKit, **params: Any) -> dict[str, Any]:
    started = await kit.call("POST", "/api/v1/gc", params, expect=202)
    for _ in range(600):
        run: dict[str, Any] = await kit.call("GET", f"/api/v1/gc/{started['run_id']}")
        if run["state"] != "running":
            assert run["state"] == "finished", run
            return run
        await asyncio.sleep(0.1)
    raise AssertionError("gc did not finish within a minute")


async def test_gc_keeps_upstream_records_while_referenced_and_forgets_them_after(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = _daemon(start_daemon)
    _, lib, app = _scene(tmp_path, seed=7)
    other = make_path(tmp_path, random.Random(70), "other", references=[lib.path])
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["admin"])
        for top in (app, other):
            body = {"roots": [top.path], "paths": [top.meta()], "upstream": [upstream_entry(lib)]}
            session = await kit.call("POST", "/api/v1/sessions", body, expect=201)
            await kit.complete(session["session_id"], await kit.upload(session, [top]))
        await kit.call("PUT", "/api/v1/pins/keep-other", {"path": other.path})
        before = bucket_keys(daemon.s3)
        dry = await _gc(kit, older_than=0, force=True, dry_run=True)
        assert dry["counts"]["upstream_forgotten"] == 0
        run = await _gc(kit, older_than=0, force=True)
        assert run["counts"]["paths_deleted"] == 1 and run["counts"].get("upstream_forgotten", 0) == 0
        assert await _upstream_rows(daemon.dsn) == ([lib.hash], [(other.hash, lib.hash)])
        after = bucket_keys(daemon.s3)
        assert f"{other.hash}.narinfo" in after and f"{app.hash}.narinfo" not in after
        assert {k for k in before - after if app.hash not in k and not k.startswith("nar/")} == set()
        await kit.call("DELETE", "/api/v1/pins/keep-other", expect=(200, 204))
        dry = await _gc(kit, older_than=0, force=True, dry_run=True)
        assert dry["counts"]["upstream_forgotten"] == 1
        run = await _gc(kit, older_than=0, force=True)
        assert run["counts"]["paths_deleted"] == 1 and run["counts"]["upstream_forgotten"] == 1
    assert await _upstream_rows(daemon.dsn) == ([], [])
    assert bucket_keys(daemon.s3) <= {"nix-cache-info"}


@pytest.fixture
def daemon_for_upstream(start_daemon: Any) -> Any:
    return _daemon(start_daemon)
