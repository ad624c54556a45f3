"""Back-off schedule, Retry-After, and which failures are retried (retry.py, transport.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from aiohttp import web

from niks3d.client.retry import RetryPolicy, is_retryable_status, parse_retry_after
from niks3d.client.transport import send
from niks3d.errors import ClientError


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    policy = RetryPolicy(attempts=8, base=0.5, cap=4.0)
    lows = policy.schedule(rand=lambda: 0.0)
    highs = policy.schedule(rand=lambda: 1.0)
    assert highs == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert lows == [h / 2 for h in highs]
    assert len(lows) == policy.attempts - 1


def test_retry_after_replaces_the_backoff_capped_with_a_little_jitter():
    policy = RetryPolicy(base=0.5, max_retry_after=60)
    assert policy.delay(0, retry_after=7, rand=lambda: 0.0) == 7
    assert 7 <= policy.delay(5, retry_after=7, rand=lambda: 1.0) <= 7.7
    assert policy.delay(0, retry_after=3600, rand=lambda: 0.0) == 60
    assert policy.delay(0, retry_after=-5, rand=lambda: 0.0) == 0


def test_should_retry_counts_tries_not_retries():
    policy = RetryPolicy(attempts=3)
    assert [policy.should_retry(n) for n in range(4)] == [True, True, False, False]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("", None),
        (None, None),
        ("-1", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_retried(status):
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 409, 413, 422, 501])
def test_client_errors_are_not_retried(status):
    assert not is_retryable_status(status)


@pytest.fixture
async def flaky_server():
    """A real HTTP server that answers from a script of (status, headers) per request."""
    script: list[tuple[int, dict[str, str]]] = []
    seen: list[tuple[float, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((time.monotonic(), await request.read()))
        status, headers = script.pop(0) if script else (200, {})
        return web.Response(status=status, headers=headers, text=f"status {status}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/x", script, seen
    finally:
        await runner.cleanup()


async def test_429_is_retried_after_the_retry_after_header_with_the_body_sent_again(flaky_server):
    url, script, seen = flaky_server
    script += [(429, {"Retry-After": "1"}), (503, {}), (200, {})]
    policy = RetryPolicy(attempts=5, base=0.01, cap=0.02)
    async with aiohttp.ClientSession() as http:
        resp = await send(http, "PUT", url, what="test upload", policy=policy, body=lambda: b"payload")
    assert resp.status == 200
    assert [body for _, body in seen] == [b"payload"] * 3
    assert seen[1][0] - seen[0][0] >= 1.0  # Retry-After honoured
    assert seen[2][0] - seen[1][0] < 1.0  # plain back-off afterwards


async def test_the_last_answer_is_returned_when_tries_run_out(flaky_server):
    url, script, seen = flaky_server
    script += [(503, {})] * 5
    async with aiohttp.ClientSession() as http:
        resp = await send(http, "GET", url, what="t", policy=RetryPolicy(attempts=3, base=0.01, cap=0.01))
    assert resp.status == 503
    assert len(seen) == 3


async def test_a_refusal_is_not_retried(flaky_server):
    url, script, seen = flaky_server
    script += [(403, {}), (200, {})]
    async with aiohttp.ClientSession() as http:
        resp = await send(http, "GET", url, what="t", policy=RetryPolicy(attempts=5, base=0.01, cap=0.01))
    assert resp.status == 403
    assert len(seen) == 1


async def test_an_unreachable_server_fails_after_every_try_naming_the_request(unused_tcp_port):
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.01)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ClientError, match="GET the info document failed after 3 tries"):
            await send(
                http,
                "GET",
                f"http://127.0.0.1:{unused_tcp_port}/",
                what="GET the info document",
                policy=policy,
            )
