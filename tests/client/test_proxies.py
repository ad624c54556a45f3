"""The client's proxy from the environment (niks3d/client/proxies.py), and requests sent through it for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from niks3d.client.proxies import Proxy, proxy_for
from niks3d.client.retry import RetryPolicy
from niks3d.client.transport import client_session, send

POLICY = RetryPolicy(attempts=1)


def test_no_proxy_variables_mean_a_direct_connection() -> None:
    assert proxy_for("http://cache.example.org/api/v1/info") is None


def test_the_proxy_is_chosen_by_the_scheme_and_its_credentials_are_kept_apart(monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://alice:s%3Acret@proxy.example.org:3128")
    monkeypatch.setenv("https_proxy", "http://tls-proxy.example.org:8080")
    plain = proxy_for("http://cache.example.org/x")
    assert plain is not None
    assert plain.url == URL("http://proxy.example.org:3128")
    assert plain.authorization == aiohttp.encode_basic_auth("alice", "s:cret")
    tls = proxy_for("https://s3.example.org/bucket/nar/x.nar.zst?X-Amz-Signature=abc")
    assert tls is not None
    assert (tls.url, tls.authorization) == (URL("http://tls-proxy.example.org:8080"), None)


def test_no_proxy_hosts_are_reached_directly(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal.example.org")
    assert proxy_for("https://s3.internal.example.org/b/k") is None
    assert proxy_for("https://localhost:9000/b/k") is None
    assert proxy_for("https://cache.example.org/") is not None


def test_an_https_proxy_is_ignored_with_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://user:secret@proxy.example.org:443")
    assert proxy_for("https://cache.example.org/") is None
    assert "https proxies are not supported" in caplog.text
    assert "secret" not in caplog.text


def test_credentials_go_on_the_connect_for_an_https_target() -> None:
    proxy = proxy_for_env("http://u:p@proxy.example.org:3128")
    tls = proxy.request_options("https://s3.example.org/b/k", {"Content-Length": "3"})
    assert tls == {"proxy": URL("http://proxy.example.org:3128"), "headers": {"Content-Length": "3"},
                   "proxy_headers": {"Proxy-Authorization": aiohttp.encode_basic_auth("u", "p")}}  # fmt: skip
    plain = proxy.request_options("http://cache.example.org/x", {"Content-Length": "3"})
    credentials = {"Proxy-Authorization": aiohttp.encode_basic_auth("u", "p")}
    assert plain == {"proxy": URL("http://proxy.example.org:3128"), "headers": {"Content-Length": "3", **credentials}}


def proxy_for_env(proxy_url: str) -> Proxy:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("http_proxy", proxy_url)
        patch.setenv("https_proxy", proxy_url)
        found = proxy_for("https://s3.example.org/")
    assert found is not None
    return found


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    """A server that answers 200 to anything and keeps what it was sent (as a proxy, and as a plain server)."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, seen


async def test_requests_go_through_the_proxy_with_its_credentials(monkeypatch, recorder) -> None:
    server, seen = recorder
    monkeypatch.setenv("http_proxy", f"http://bob:pw@127.0.0.1:{server.port}")
    async with client_session() as http:
        answer = await send(http, "PUT", "http://cache.invalid/nar/x.nar.zst", what="a PUT", policy=POLICY,
                            body=lambda: b"nar bytes")  # fmt: skip
    assert answer.status == 200
    (request,) = seen
    assert request.host == "cache.invalid"  # the proxy was asked for the target host
    assert request.headers["Proxy-Authorization"] == aiohttp.encode_basic_auth("bob", "pw")


async def test_a_netrc_naming_the_host_adds_no_credentials(monkeypatch, recorder, tmp_path: Path) -> None:
    # aiohttp's trust_env put ~/.netrc's password on every request to that host: with the API's own Authorization
    # header the request failed ("Cannot combine AUTHORIZATION header with AUTH argument"), and a presigned S3
    # request would have carried a second, wrong authentication.
    server, seen = recorder
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login nix password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    async with client_session() as http:
        api = await send(http, "GET", str(server.make_url("/api/v1/info")), what="the API", policy=POLICY,
                         headers={"Authorization": "Bearer the-token"})  # fmt: skip
        s3 = await send(http, "PUT", str(server.make_url("/b/k?X-Amz-Signature=abc")), what="S3", policy=POLICY,
                        body=lambda: b"x")  # fmt: skip
    assert (api.status, s3.status) == (200, 200)
    assert [r.headers.get("Authorization") for r in seen] == ["Bearer the-token", None]
