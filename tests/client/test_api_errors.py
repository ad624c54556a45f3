"""Clear errors for an unreachable server, a refused token, a missing scope, a version mismatch."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from niks3d.client.api import ApiClient, ObjectsMissing, ObjectsPending, SessionClosed
from niks3d.client.config import ClientConfig, Token
from niks3d.client.main import main
from niks3d.client.retry import RetryPolicy
from niks3d.errors import ApiError, ClientError

INFO = {
    "service": "niks3d",
    "version": "0.1.0",
    "api_versions": [1],
    "capabilities": ["sessions", "multipart", "logs", "realisations", "pins"],
    "store_dir": "/nix/store",
    "compression": "zstd",
    "limits": {
        "max_body_bytes": 1,
        "max_paths_per_session": 2,
        "multipart_threshold": 3,
        "part_size": 4,
        "max_parts": 5,
    },
    "public_keys": [],
}
FAST = RetryPolicy(attempts=2, base=0.01, cap=0.01)


@pytest.fixture
async def stub():
    """A real HTTP server whose answers the test sets: path -> (status, JSON body or text)."""
    answers: dict[str, tuple[int, object]] = {}
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        status, body = answers.get(request.path, (404, "not here"))
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", answers, seen
    finally:
        await runner.cleanup()


async def _client(url: str, token: str | None = "secret-token"):
    http = aiohttp.ClientSession()
    config = ClientConfig(url, Token(token, "/etc/niks3/token") if token else None)
    return http, ApiClient(http, config, FAST)


async def test_info_is_parsed_and_the_token_is_sent_as_bearer(stub):
    url, answers, seen = stub
    answers["/api/v1/info"] = (200, INFO)
    http, api = await _client(url)
    async with http:
        info = await api.info()
    assert info.limits.part_size == 4
    assert seen[0].headers["Authorization"] == "Bearer secret-token"
    assert seen[0].headers["User-Agent"].startswith("niks3/")


async def test_a_server_without_api_version_1_is_a_version_mismatch(stub):
    url, answers, _ = stub
    answers["/api/v1/info"] = (200, {**INFO, "api_versions": [2, 3], "version": "9.0"})
    http, api = await _client(url)
    async with http:
        with pytest.raises(
            ClientError, match=r"version mismatch: the server \(niks3d 9.0\) speaks API version\(s\) 2, 3"
        ):
            await api.info()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((404, "not here"), "answered HTTP 404"),
        ((200, "<html>"), "not niks3d's info document"),
        ((200, {**INFO, "service": "attic"}), "'attic' server"),
    ],
    ids=["404", "html", "other-service"],
)
async def test_something_else_than_niks3d_is_named(stub, answer, message):
    url, answers, _ = stub
    answers["/api/v1/info"] = answer
    http, api = await _client(url)
    async with http:
        with pytest.raises(ClientError, match=r"does not look like a niks3d server|is a 'attic' server") as caught:
            await api.info()
    assert message in str(caught.value)


async def test_a_refused_token_names_the_token_file_but_not_the_token(stub):
    url, answers, _ = stub
    answers["/api/v1/sessions"] = (401, {"error": "unauthorized", "message": "unknown token"})
    http, api = await _client(url)
    async with http:
        with pytest.raises(ClientError, match="refused the token from /etc/niks3/token") as caught:
            await api.create_session({})
    assert "secret-token" not in str(caught.value)


async def test_a_missing_token_says_to_pass_one(stub):
    url, answers, _ = stub
    answers["/api/v1/pins"] = (401, {"error": "unauthorized", "message": "no token"})
    http, api = await _client(url, token=None)
    async with http:
        with pytest.raises(ClientError, match="needs an API token"):
            await api.list_pins()


async def test_a_missing_scope_names_the_scope(stub):
    url, answers, _ = stub
    answers["/api/v1/pins/x"] = (403, {"error": "forbidden", "message": "token lacks scope pin"})
    http, api = await _client(url)
    async with http:
        with pytest.raises(ClientError, match="lacks the 'pin' scope"):
            await api.put_pin("x", "/nix/store/" + "a" * 32 + "-a")


async def test_protocol_refusals_become_typed_errors(stub):
    url, answers, _ = stub
    spec = {"kind": "ls", "key": "k.ls", "action": "put", "url": "http://s3/k.ls"}
    http, api = await _client(url)
    async with http:
        answers["/api/v1/sessions/s/complete"] = (
            409,
            {"error": "objects_pending", "message": "m", "pending": ["a"], "retry_after": 2},
        )
        with pytest.raises(ObjectsPending) as pending:
            await api.complete("s", {})
        assert (pending.value.pending, pending.value.retry_after) == (["a"], 2)
        answers["/api/v1/sessions/s/complete"] = (
            422,
            {
                "error": "objects_missing",
                "message": "m",
                "missing": [{"key": "k.ls", "reason": "gone"}],
                "objects": [spec],
            },
        )
        with pytest.raises(ObjectsMissing) as missing:
            await api.complete("s", {})
        assert missing.value.objects[0].key == "k.ls" and missing.value.missing[0].reason == "gone"
        answers["/api/v1/sessions/s/complete"] = (409, {"error": "session_closed", "message": "expired"})
        with pytest.raises(SessionClosed):
            await api.complete("s", {})
        answers["/api/v1/sessions"] = (400, {"error": "invalid_request", "message": "paths[0].nar_hash: bad"})
        with pytest.raises(ApiError, match=r"paths\[0\].nar_hash: bad") as bad:
            await api.create_session({})
        assert (bad.value.status, bad.value.code) == (400, "invalid_request")


async def test_deleting_a_pin_that_is_gone_is_not_an_error(stub):
    url, answers, _ = stub
    answers["/api/v1/pins/gone"] = (404, {"error": "pin_not_found", "message": "no pin"})
    answers["/api/v1/pins/here"] = (204, "")
    http, api = await _client(url)
    async with http:
        assert await api.delete_pin("gone") is False
        assert await api.delete_pin("here") is True


def test_main_reports_an_unreachable_server_in_one_line(unused_tcp_port, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    code = main(
        [
            "pins",
            "list",
            "--server",
            f"http://127.0.0.1:{unused_tcp_port}",
            "--token-file",
            str(token),
            "--tries",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("niks3: error: GET http://127.0.0.1:") and "failed after 1 tries" in err
    assert err.count("\n") == 1


def test_main_without_a_server_says_where_to_configure_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("NIKS3_SERVER_URL", raising=False)
    assert main(["pins", "list"]) == 1
    assert "no server URL: pass --server" in capsys.readouterr().err


def test_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["push", "--jobs", "many"])
    assert caught.value.code == 2


def test_push_json_document_shape():
    from niks3d.client.pipeline import Uploaded
    from niks3d.client.push import PushResult
    from niks3d.nix.storepath import StorePath

    path = StorePath.parse("/nix/store/" + "a" * 32 + "-a")
    result = PushResult(
        server="http://x",
        session_id="s",
        roots=[path.path],
        paths=3,
        uploaded=[Uploaded(path, 100, 40, ["nar", "ls"], 45)],
        cached=["c"],
        already_uploaded=[],
        published=[path.path],
        nar_bytes=100,
        bytes_sent=45,
        seconds=1.23456,
        pin=None,
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["uploaded"] == [
        {"path": path.path, "nar_size": 100, "file_size": 40, "objects": ["nar", "ls"], "bytes_sent": 45}
    ]
    assert doc["seconds"] == 1.235
    assert set(doc) == {
        "server",
        "session_id",
        "roots",
        "paths",
        "uploaded",
        "cached",
        "upstream",
        "upstream_nar_bytes",
        "already_uploaded",
        "published",
        "nar_bytes",
        "bytes_sent",
        "seconds",
        "pin",
    }


async def test_reports_are_batched_and_kept_until_the_server_accepts_them(stub):
    from niks3d.client.reporter import Reporter

    url, answers, seen = stub
    http, api = await _client(url)
    async with http:
        reporter = Reporter(api, "s", batch=2, interval=3600)
        reporter.start()
        answers["/api/v1/sessions/s/objects"] = (503, {"error": "unavailable", "message": "later"})
        reporter.add("nar/a.nar.zst", 10, "sha256:x")
        await reporter.flush()  # the server is down: the report stays pending
        assert reporter.pending == {"nar/a.nar.zst": {"file_size": 10, "file_hash": "sha256:x"}}
        answers["/api/v1/sessions/s/objects"] = (
            200,
            {"accepted": ["nar/a.nar.zst"], "missing": [{"key": "b.ls", "reason": "not found in the bucket"}]},
        )
        reporter.add("b.ls", 5)  # the second report fills the batch: sent without waiting for the interval
        for _ in range(100):
            if not reporter.pending:
                break
            await asyncio.sleep(0.01)
        await reporter.stop()
    assert reporter.pending == {}
    assert reporter.accepted == {"nar/a.nar.zst"}
    assert reporter.missing == {"b.ls": "not found in the bucket"}
    assert [r.path for r in seen].count("/api/v1/sessions/s/objects") == 3  # 2 tries while down, then 1 batch
