"""The one authentication check (niks3d.server.auth) on both surfaces, with raw HTTP so that any bytes can be sent:
Bearer and Basic everywhere, JSON + Bearer challenge on the API, text + Basic challenge for what Nix reads, and a
401 naming the problem (never a 500) for every malformed header."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from niks3d.secrets import Token
from niks3d.server.auth import Identity, TokenTable, identity_key, permits, require, tokens_key
from niks3d.server.errors import error_middleware

PUSHER = "pusher-secret-0123456789abcdef"
READER = "reader-secret-0123456789abcdef"
ADMIN = "admin-secret-0123456789abcdef"


async def _whoami(request: web.Request) -> web.Response:
    identity = require(request, "push")
    assert request[identity_key] is identity
    return web.json_response({"kind": identity.kind, "name": identity.name})


async def _nix(request: web.Request) -> web.Response:
    require(request, "read")
    return web.Response(text="ok")


async def _page(request: web.Request) -> web.Response:
    return web.Response(text="more" if permits(request, "read") else "less")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application(middlewares=[error_middleware])
    app[tokens_key] = TokenTable(
        [
            Token("ci", PUSHER.encode(), frozenset({"push"})),
            Token("nix", READER.encode(), frozenset({"read"})),
            Token("root", ADMIN.encode(), frozenset({"admin"})),
        ]
    )
    app.router.add_post("/api/x", _whoami)
    app.router.add_get("/cache/x.narinfo", _nix)
    app.router.add_get("/", _page)
    async with TestServer(app) as srv:
        yield srv


async def _raw(
    server: TestServer, method: str, target: str, authorization: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    """Send a request byte for byte and read the answer (status, headers in lower case, body)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n".encode()
    if authorization is not None:
        head += b"Authorization: " + authorization + b"\r\n"
    writer.write(head + b"\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _basic(password: str, user: str = "nix") -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


async def test_bearer_and_basic_are_accepted_on_both_surfaces(server: TestServer) -> None:
    for credentials in (
        b"Bearer " + PUSHER.encode(),
        _basic(PUSHER),
        _basic(PUSHER, user=""),
        b"bearer " + PUSHER.encode(),
    ):
        status, _, body = await _raw(server, "POST", "/api/x", credentials)
        assert status == 200 and json.loads(body) == {"kind": "token", "name": "ci"}, credentials
    for credentials in (b"Bearer " + READER.encode(), _basic(READER), _basic(ADMIN)):
        status, _, body = await _raw(server, "GET", "/cache/x.narinfo", credentials)
        assert (status, body) == (200, b"ok"), credentials


MALFORMED = [
    (b"Bearer \xff", "not printable ASCII"),
    (b"Bearer \xc3\xa9t\xc3\xa9", "not printable ASCII"),
    (b"Basic \xff\xfe", "not printable ASCII"),
    (b"Bearer ", "must be 'Bearer <token>'"),
    (b"Bearer", "must be 'Bearer <token>'"),
    (b"Token " + PUSHER.encode(), "must be 'Bearer <token>'"),
    (b"Basic !!", "not valid base64"),
    (b"Basic " + base64.b64encode(PUSHER.encode()), "'user:token'"),
    (b"Basic " + base64.b64encode(b"nix:"), "'user:token'"),
    (b"Bearer wrong-token-value", "not known"),
    (_basic("wrong-token-value"), "not known"),
    (None, "needs a token"),
]


@pytest.mark.parametrize(("credentials", "fragment"), MALFORMED)
async def test_the_api_refuses_bad_credentials_with_json_and_a_bearer_challenge(
    server: TestServer, credentials: bytes | None, fragment: str
) -> None:
    status, headers, body = await _raw(server, "POST", "/api/x", credentials)
    assert status == 401
    answer = json.loads(body)
    assert answer["error"] == "unauthorized" and fragment in answer["message"]
    assert headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(("credentials", "fragment"), MALFORMED)
async def test_nix_reads_refusals_as_text_with_a_basic_challenge(
    server: TestServer, credentials: bytes | None, fragment: str
) -> None:
    status, headers, body = await _raw(server, "GET", "/cache/x.narinfo", credentials)
    assert status == 401
    assert fragment in body.decode() and body.endswith(b"\n") and not body.startswith(b"{")
    assert headers["content-type"].startswith("text/plain")
    assert headers["www-authenticate"].startswith("Basic ")


async def test_a_known_token_without_the_scope_gets_403_naming_it_and_the_log_names_no_secret(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="niks3d.server.auth")
    status, headers, body = await _raw(server, "POST", "/api/x", _basic(READER))
    assert status == 403 and "www-authenticate" not in headers
    answer = json.loads(body)
    assert (
        answer["error"] == "forbidden" and "'nix' lacks the scope" in answer["message"] and "push" in answer["message"]
    )
    status, _, body = await _raw(server, "GET", "/cache/x.narinfo", b"Bearer " + PUSHER.encode())
    assert status == 403 and b"'ci' lacks the scope for this: needs read" in body
    assert "'nix'" in caplog.text and "'ci'" in caplog.text
    assert all(secret not in caplog.text for secret in (PUSHER, READER, ADMIN))


async def test_permits_is_a_yes_or_no_even_for_malformed_credentials(server: TestServer) -> None:
    for credentials, shown in (
        (_basic(READER), b"more"),
        (b"Bearer \xff", b"less"),
        (None, b"less"),
        (_basic(PUSHER), b"less"),
    ):
        status, _, body = await _raw(server, "GET", "/", credentials)
        assert (status, body) == (200, shown), credentials


def test_an_identity_allows_its_scopes_and_admin_allows_all() -> None:
    reader = Identity(kind="token", name="r", scopes=frozenset({"read"}))
    assert reader.allows("read") and reader.allows("push", "read") and not reader.allows("push")
    assert Identity(kind="token", name="a", scopes=frozenset({"admin"})).allows("gc")
