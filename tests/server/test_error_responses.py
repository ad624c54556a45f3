"""Bad input at the API boundary: each gets a 4xx whose JSON message names the problem, nothing is written
(database and bucket checked), and no traceback or internal detail ever reaches the client."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server.bucketview import bucket_keys, table_counts
from tests.server.pushkit import PushKit, make_closure, random_hash

GOOD_HASH = "sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"


def _path_entry(path: str, **overrides: Any) -> dict[str, Any]:
    entry = {"path": path, "nar_hash": GOOD_HASH, "nar_size": 120, "references": []}
    entry.update(overrides)
    return entry


def _store_path(name: str = "x") -> str:
    return f"/nix/store/{random_hash(random.Random(name))}-{name}"


P = _store_path("p")
CASES: list[tuple[str, Any, int, str]] = [
    ("not json", b"{not json", 400, "not valid JSON"),
    ("json array", [], 400, "must be a JSON object"),
    ("unknown field", {"roots": [], "paths": [_path_entry(P)], "extra": 1}, 400, "unknown field(s) 'extra'"),
    ("missing paths", {"roots": []}, 400, "missing field(s) 'paths'"),
    ("empty paths", {"roots": [], "paths": []}, 400, "must not be empty"),
    (
        "unknown path field",
        {"roots": [], "paths": [_path_entry(P, color="red")]},
        400,
        "paths[0]: unknown field",
    ),
    ("relative path", {"roots": [], "paths": [_path_entry("nix/store/abc")]}, 400, "paths[0].path"),
    (
        "traversal path",
        {"roots": [], "paths": [_path_entry("/nix/store/../etc/passwd")]},
        400,
        "paths[0].path",
    ),
    ("bad hash char", {"roots": [], "paths": [_path_entry("/nix/store/" + "e" * 32 + "-x")]}, 400, "nix32"),
    ("bad name", {"roots": [], "paths": [_path_entry(P[:44] + "-a b")]}, 400, "paths[0].path"),
    (
        "bad nar hash",
        {"roots": [], "paths": [_path_entry(P, nar_hash="sha256:xyz")]},
        400,
        "paths[0].nar_hash",
    ),
    ("md5 nar hash", {"roots": [], "paths": [_path_entry(P, nar_hash="md5:abc")]}, 400, "paths[0].nar_hash"),
    ("zero size", {"roots": [], "paths": [_path_entry(P, nar_size=0)]}, 400, "paths[0].nar_size"),
    ("string size", {"roots": [], "paths": [_path_entry(P, nar_size="12")]}, 400, "must be an integer"),
    ("bad reference", {"roots": [], "paths": [_path_entry(P, references=["../../x"])]}, 400, "references[0]"),
    ("deriver not drv", {"roots": [], "paths": [_path_entry(P, deriver=P)]}, 400, "not a derivation"),
    (
        "log without deriver",
        {"roots": [], "paths": [_path_entry(P, log=True)]},
        400,
        "needs the path's deriver",
    ),
    ("bad ca", {"roots": [], "paths": [_path_entry(P, ca="nonsense")]}, 400, "content address"),
    ("root not in paths", {"roots": [_store_path("r")], "paths": [_path_entry(P)]}, 400, "roots[0]"),
    ("duplicate path", {"roots": [], "paths": [_path_entry(P), _path_entry(P)]}, 400, "listed twice"),
    (
        "bad idempotency key",
        {"idempotency_key": "a/b", "roots": [], "paths": [_path_entry(P)]},
        400,
        "idempotency_key",
    ),
    (
        "unknown reference",
        {"roots": [], "paths": [_path_entry(P, references=[_store_path("q")])]},
        422,
        "neither in this push nor in the cache",
    ),
]


async def _assert_nothing_written(daemon: Any) -> None:
    counts = await table_counts(daemon.dsn)
    assert all(v == 0 for v in counts.values()), counts
    assert bucket_keys(daemon.s3) == {"nix-cache-info"}


def _assert_error(status: int, body: Any, expected_status: int, fragment: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) >= {"error", "message"}, body
    assert fragment in body["message"], body["message"]
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text and "/niks3d/" not in text


async def test_malformed_session_requests_are_refused_and_write_nothing(daemon: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for name, body, status, fragment in CASES:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with http.post(
                f"{daemon.url}/api/v1/sessions",
                data=data,
                headers={**daemon.headers(), "Content-Type": "application/json"},
            ) as r:
                _assert_error(r.status, await r.json(), status, fragment)
                assert r.status < 500, name
    await _assert_nothing_written(daemon)


async def test_body_limits_and_media_types(start_daemon: Any) -> None:
    daemon = start_daemon(server={"max_body_bytes": 4096})
    async with aiohttp.ClientSession() as http:
        big = json.dumps({"roots": [], "paths": [_path_entry(P)] * 100}).encode()
        async with http.post(
            f"{daemon.url}/api/v1/sessions",
            data=big,
            headers={**daemon.headers(), "Content-Type": "application/json"},
        ) as r:
            _assert_error(r.status, await r.json(), 413, "larger than the limit")
        async with http.post(
            f"{daemon.url}/api/v1/sessions",
            data=b"roots=1",
            headers={**daemon.headers(), "Content-Type": "application/x-www-form-urlencoded"},
        ) as r:
            _assert_error(r.status, await r.json(), 415, "application/json")
        async with http.post(f"{daemon.url}/api/v1/sessions", headers=daemon.headers()) as r:
            _assert_error(r.status, await r.json(), 400, "needs a JSON body")
    await _assert_nothing_written(daemon)


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        ({}, 401, "needs a token"),
        ({"Authorization": "Bearer wrong-token-value"}, 401, "not known"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "not known"),
        ({"Authorization": "Bearer \xff"}, 401, "not printable ASCII"),
        ({"Authorization": "Bearer "}, 401, "Bearer"),
    ],
)
async def test_missing_or_unknown_tokens_get_401(
    daemon: Any, headers: dict[str, str], status: int, fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{daemon.url}/api/v1/sessions", json={"roots": [], "paths": [_path_entry(P)]}, headers=headers) as r,
    ):
        _assert_error(r.status, await r.json(), status, fragment)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    await _assert_nothing_written(daemon)
    assert daemon.tokens["pusher"] not in daemon.log()


async def test_tokens_without_the_scope_get_403(daemon: Any, tmp_path: Path) -> None:
    paths = make_closure(tmp_path, seed=9, n=1)
    async with aiohttp.ClientSession() as http:
        reader = PushKit(http, daemon.url, daemon.tokens["reader"])
        body = await reader.open(paths, paths, expect=403)
        assert "lacks the scope" in body["message"] and "push" in body["message"]
        collector = PushKit(http, daemon.url, daemon.tokens["collector"])
        body = await collector.call("PUT", "/api/v1/pins/x", {"path": paths[0].path}, expect=403)
        assert "pin" in body["message"]
    await _assert_nothing_written(daemon)
    log = daemon.log()
    assert all(secret not in log for secret in daemon.tokens.values())


async def test_session_endpoints_refuse_bad_ids_and_keys(daemon: Any, tmp_path: Path) -> None:
    paths = make_closure(tmp_path, seed=10, n=2)
    async with aiohttp.ClientSession() as http:
        kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
        body = await kit.call("POST", "/api/v1/sessions/not-a-uuid/complete", {}, expect=404)
        assert body["error"] == "session_not_found"
        body = await kit.call("POST", "/api/v1/sessions/00000000-0000-0000-0000-000000000000/complete", {}, expect=404)
        assert body["error"] == "session_not_found"
        session = await kit.open(paths, paths[-1:])
        sid = session["session_id"]
        for key, fragment in [
            ("../../etc/passwd", "objects"),
            ("nar/../../x", "objects"),
            ("/abs.narinfo", "objects"),
            ("nar/%2e%2e.nar.zst", "objects"),
            (f"{paths[0].hash}.narinfo", "written by the server"),
        ]:
            body = await kit.call(
                "POST", f"/api/v1/sessions/{sid}/objects", {"objects": {key: {"file_size": 1}}}, expect=400
            )
            assert fragment in body["message"], body
        body = await kit.call(
            "POST",
            f"/api/v1/sessions/{sid}/urls",
            {"objects": [{"key": "nar/" + "0" * 52 + ".nar.zst"}]},
            expect=400,
        )
        assert "not an object of this session" in body["message"]
        body = await kit.call(
            "POST",
            f"/api/v1/sessions/{sid}/objects",
            {"objects": {"nar/" + "0" * 52 + ".nar.zst": {"file_size": 1, "file_hash": GOOD_HASH}}},
            expect=400,
        )
        assert "not an object of this session" in body["message"]
        aborted = await kit.call("DELETE", f"/api/v1/sessions/{sid}")
        assert aborted["state"] == "aborted"
        assert (await kit.call("DELETE", f"/api/v1/sessions/{sid}"))["state"] == "aborted"
        body = await kit.complete(sid, expect=409)
        assert body["error"] == "session_closed"
    counts = await table_counts(daemon.dsn)
    assert counts["store_paths"] == 0 and counts["session_claims"] == 0
    assert not any(k.endswith(".narinfo") for k in bucket_keys(daemon.s3))


async def test_unknown_routes_and_methods_are_json_4xx(daemon: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.url}/api/v1/nothing") as r:
            _assert_error(r.status, await r.json(), 404, "no such resource")
        async with http.put(f"{daemon.url}/api/v1/sessions", headers=daemon.headers()) as r:
            _assert_error(r.status, await r.json(), 405, "not allowed")
        async with http.get(f"{daemon.url}/api/v1/info") as r:
            info = await r.json()
            assert r.status == 200 and 1 in info["api_versions"]
            assert info["public_keys"] == [k.public_key().to_text() for k in daemon.signing_keys]
