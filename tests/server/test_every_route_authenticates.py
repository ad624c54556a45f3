"""Every route of the daemon authenticates through the one function, server/auth.py's ``_identify`` (through
``require`` or ``permits``), before it does anything else (issue 11, item 1). That function is where a token, an
OIDC ID token (the middleware's verdict) and a client certificate become an ``Identity``, so a route that calls it
treats the three alike; tests/e2e/test_oidc.py and test_mtls.py push and read with the real thing.

The route table is the daemon's own (``create_app``), with every optional surface on and the cache private, so a
route added later without ``require`` fails here: each route is called without credentials and must answer 401
after asking ``_identify``, except the few that are public by design."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from niks3d.config import load_config
from niks3d.server import auth
from niks3d.server.app import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

# Public by design (docs/auth.md): liveness and readiness, what a client needs to know to talk to the server,
# and the landing page (which asks permits() only to decide whether to show a private cache's figures).
PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("GET", "/api/v1/info"), ("GET", "/")}
_SAMPLES = {
    "session_id": str(uuid.UUID(int=1)),
    "name": "some-pin",
    "run_id": "1",
    "path": "nix/store/" + "a" * 32 + "-x",
    "key": "x",
    "narinfo": "a" * 32 + ".narinfo",
    "listing": "a" * 32 + ".ls",
    "root": "some-root",
}


def _target(pattern: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: _SAMPLES[m[1]], pattern)


async def test_every_route_asks_the_one_auth_function_first(
    make_daemon_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = make_daemon_config(server={"read_proxy": "private", "metrics": "private"})
    app = create_app(load_config(daemon.config_path))
    asked: list[str] = []
    real = auth._identify

    def identify(request: Any, scopes: tuple[str, ...]) -> auth.Identity:
        asked.append(f"{request.method} {request.path}")
        return real(request, scopes)

    monkeypatch.setattr(auth, "_identify", identify)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        routes = sorted(
            {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource}
        )
        assert len(routes) > 30  # the proxy's and the stock writes' routes, twice (top and roots/<name>/), are in
        wrong = []
        for method, pattern in routes:
            asked.clear()
            target = _target(pattern)
            async with http.request(method, server.make_url(target), data=b"" if method == "PUT" else None) as answer:
                status = answer.status
            if (method, pattern) in PUBLIC:
                if status >= 400:
                    wrong.append(f"{method} {pattern}: public, answered {status}")
            elif status != 401 or asked != [f"{method} {target}"]:
                wrong.append(f"{method} {pattern}: {status}, asked the auth function {len(asked)} time(s)")
    assert wrong == []
