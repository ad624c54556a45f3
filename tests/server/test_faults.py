"""Faults under the daemon: PostgreSQL or SeaweedFS frozen (SIGSTOP), idle and half-open connections, slow bodies.

Every wait is bounded (docs/configuration.md): while a dependency is frozen, requests that need it answer 503 with
Retry-After instead of hanging, ``/ready`` says 503 at once, and everything works again after SIGCONT. The
daemon runs with short timeouts here, so that "bounded" is seen within the client's own socket timeout: a
request that hangs fails the test with a socket timeout, not a timing comparison.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from niks3d.devenv.postgres import PostgresServer
from niks3d.devenv.seaweedfs import SeaweedServer
from tests.fixtures.own import OWN_BUCKET
from tests.server.faultkit import (
    CLIENT_TIMEOUT,
    FAST,
    assert_unavailable,
    frozen,
    request,
    s3_section,
    wait_ready,
)
from tests.server.proxykit import make_path, push


def _session_body(paths: list[Any]) -> dict[str, Any]:
    return {"roots": [paths[-1].path], "paths": [p.meta() for p in paths]}


async def test_a_frozen_postgresql_gives_fast_503s_and_everything_resumes(
    own_postgres: PostgresServer, make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    dsn = own_postgres.create_database("niks3")
    daemon = start_daemon(make_daemon_config(database={**FAST["database"], "url": dsn}, server=FAST["server"]))
    rng = random.Random(7)
    pushed = make_path(tmp_path, rng, "pushed")
    await push(daemon, [pushed])
    fresh = make_path(tmp_path, rng, "fresh")
    missing = "0" * 32
    auth = daemon.headers("pusher")
    pin_auth = daemon.headers("pinner")

    with frozen(own_postgres.pids):
        assert_unavailable(request(f"{daemon.url}/ready"), "/ready")
        assert_unavailable(request(f"{daemon.url}/{missing}.narinfo"), "narinfo miss")
        assert_unavailable(
            request(f"{daemon.url}/api/v1/sessions", method="POST", body=_session_body([fresh]), headers=auth),
            "POST /api/v1/sessions",
        )
        assert_unavailable(request(f"{daemon.url}/api/v1/pins", headers=pin_auth), "GET /api/v1/pins")
        assert_unavailable(
            request(f"{daemon.url}/api/v1/pins/frozen", method="PUT", body={"path": pushed.path}, headers=pin_auth),
            "PUT /api/v1/pins/frozen",
        )
        # The process itself still answers.
        assert request(f"{daemon.url}/health")[0] == 200

    # Everything resumes: readiness, reads, pushes.
    await wait_ready(daemon.url)
    assert request(f"{daemon.url}/{pushed.hash}.narinfo")[0] == 200
    await push(daemon, [fresh])
    assert request(f"{daemon.url}/{fresh.hash}.narinfo")[0] == 200
    # Logged as an outage (WARNING), not as a failure of the daemon (ERROR with a traceback of ours).
    errors = [line for line in daemon.log().splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert not errors, errors[:5]


async def test_a_frozen_s3_gives_fast_503s_and_everything_resumes(
    own_s3: SeaweedServer, make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(make_daemon_config(s3=s3_section(own_s3, OWN_BUCKET, tmp_path), server=FAST["server"]))
    rng = random.Random(8)
    pushed = make_path(tmp_path, rng, "pushed", log=True)
    await push(daemon, [pushed])
    fresh, other = make_path(tmp_path, rng, "fresh"), make_path(tmp_path, rng, "other")
    status, _, text = request(f"{daemon.url}/{pushed.hash}.narinfo")
    assert status == 200
    nar_url = next(line.split(": ", 1)[1] for line in text.decode().splitlines() if line.startswith("URL: "))

    with frozen(lambda: [own_s3.pid]):
        assert_unavailable(request(f"{daemon.url}/ready"), "/ready")
        assert_unavailable(request(f"{daemon.url}/{nar_url}"), "NAR GET")
        assert_unavailable(request(f"{daemon.url}/{nar_url}", method="HEAD"), "NAR HEAD")
        # Opening a session only presigns (no S3 request) for paths the cache lacks: it still answers.
        status, _, body = request(
            f"{daemon.url}/api/v1/sessions",
            method="POST",
            body=_session_body([other]),
            headers=daemon.headers("pusher"),
        )
        assert status in (201, 503), (status, body[:300])
        # narinfos come from PostgreSQL: still served.
        assert request(f"{daemon.url}/{pushed.hash}.narinfo")[0] == 200

    await wait_ready(daemon.url)
    status, _, nar = request(f"{daemon.url}/{nar_url}")
    assert status == 200 and nar == pushed.compressed
    await push(daemon, [fresh])
    assert request(f"{daemon.url}/{fresh.hash}.narinfo")[0] == 200


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the daemon closes the connection (EOF) within CLIENT_TIMEOUT; False if it stays open."""
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_and_half_open_connections_are_closed(make_daemon_config: Any, start_daemon: Any) -> None:
    daemon = start_daemon(make_daemon_config(server=FAST["server"]))
    port = int(daemon.url.rsplit(":", 1)[1])

    idle = socket.create_connection(("127.0.0.1", port))
    half_headers = socket.create_connection(("127.0.0.1", port))
    half_headers.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    keep_alive = socket.create_connection(("127.0.0.1", port))
    keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(
        b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {daemon.tokens['pusher']}\r\n".encode()
        + b"Content-Length: 1000\r\n\r\n{"
    )
    try:
        for name, sock in (("idle", idle), ("half-sent headers", half_headers), ("keep-alive", keep_alive)):
            assert _closed_by_server(sock), f"the {name} connection was still open after {CLIENT_TIMEOUT} s"
        slow_body.settimeout(CLIENT_TIMEOUT)
        answer = slow_body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
    finally:
        for sock in (idle, half_headers, keep_alive, slow_body):
            sock.close()
    # The daemon still serves.
    assert request(f"{daemon.url}/health")[0] == 200


@pytest.mark.parametrize("frozen_after", [0.5, 6.0], ids=["s3-answers-late", "s3-times-out"])
async def test_a_client_that_goes_away_before_the_headers_is_no_server_error(
    own_s3: SeaweedServer, make_daemon_config: Any, start_daemon: Any, tmp_path: Path, frozen_after: float
) -> None:
    """S3 answers after the reader hung up, or not before s3.request_timeout (5 s here): either way the request
    is counted as 499 and logged at INFO, never as a 503 or an ERROR."""
    daemon = start_daemon(make_daemon_config(s3=s3_section(own_s3, OWN_BUCKET, tmp_path), server=FAST["server"]))
    pushed = make_path(tmp_path, random.Random(9), "pushed")
    await push(daemon, [pushed])
    text = request(f"{daemon.url}/{pushed.hash}.narinfo")[2].decode()
    nar_url = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("URL: "))
    port = int(daemon.url.rsplit(":", 1)[1])

    # S3 holds the answer back while the reader hangs up; the answer then has nobody to go to.
    with frozen(lambda: [own_s3.pid]):
        reader = socket.create_connection(("127.0.0.1", port))
        reader.sendall(f"GET /{nar_url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(0.5)
        reader.close()
        await asyncio.sleep(frozen_after)
    deadline = time.monotonic() + 20
    while "the client went away" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        await asyncio.sleep(0.2)

    errors = [line for line in daemon.log().splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert not errors, errors[:5]
    metrics = request(f"{daemon.url}/metrics")[2].decode()
    nar_lines = [
        line for line in metrics.splitlines() if line.startswith("niks3d_http_requests_total{") and "/nar/" in line
    ]
    assert any('status="499"' in line for line in nar_lines), nar_lines
    assert not any('status="5' in line for line in nar_lines), nar_lines
