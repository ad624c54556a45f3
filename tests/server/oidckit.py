"""A local OIDC issuer for tests: a real HTTPS server (its own CA, made with ``cryptography``) serving a
discovery document, a JWKS and GitHub Actions' token endpoint, in a thread of its own so that blocking test
code (the daemon fixture, ``niks3`` runs) does not stall it. Keys are made with ``cryptography`` and tokens
signed with PyJWT; the daemon's verification is the real one."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from niks3d.devenv.process import free_port
from tests.server.certkit import CA

AUDIENCE = "https://cache.test"


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.crt, server.key)."""
    ca = CA("test OIDC CA")
    cert, key = ca.server_cert().write(directory, "server")
    return ca.write(directory / "ca.pem"), cert, key


def new_key(alg: str = "RS256") -> Any:
    return rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())


def _jwk(kid: str, key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


class Issuer:
    """The issuer at ``url``; ``keys`` is what its JWKS publishes (change it to rotate), ``stop``/``start``."""

    def __init__(self, directory: Path) -> None:
        self.ca, self._cert, self._key = make_tls(directory)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.keys: dict[str, Any] = {"k1": new_key("RS256"), "k2": new_key("ES256")}
        self.request_token = secrets.token_urlsafe(16)  # ACTIONS_ID_TOKEN_REQUEST_TOKEN
        self.github_claims: dict[str, Any] = {}  # what the GitHub token endpoint puts in its tokens
        self.jwks_fetches = 0
        self.github_requests = 0  # token requests that passed the request-token check
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.start()

    # -- the server -------------------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [_jwk(kid, key) for kid, key in self.keys.items()]})

    async def _github(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.request_token}":
            return web.json_response({"message": "bad request token"}, status=401)
        self.github_requests += 1
        claims = {**github_claims(), **self.github_claims, "aud": request.query.get("audience", "")}
        return web.json_response({"count": 1, "value": self.token(claims)})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/github-token", self._github)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            # Closing a TLS connection waits for the peer's close_notify; give the closes a moment to finish
            # so that no socket is left for the garbage collector (a ResourceWarning is an error in tests).
            await asyncio.sleep(0.5)

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- tokens -----------------------------------------------------------------------------------------

    def token(self, claims: dict[str, Any], kid: str = "k1", *, key: Any = None, alg: str | None = None) -> str:
        key = key if key is not None else self.keys[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode({"iss": self.url, **claims}, key, algorithm=alg, headers={"kid": kid})

    def github_url(self) -> str:
        return f"{self.url}/github-token?api-version=2.0"


def github_claims(repository: str = "acme/app", **more: Any) -> dict[str, Any]:
    """Claims shaped like GitHub Actions' ID tokens (docs/auth.md lists the ones rules can use)."""
    now = int(time.time())
    owner = repository.split("/")[0]
    return {
        "aud": AUDIENCE,
        "sub": f"repo:{repository}:ref:refs/heads/main",
        "repository": repository,
        "repository_owner": owner,
        "ref": "refs/heads/main",
        "workflow_ref": f"{repository}/.github/workflows/ci.yml@refs/heads/main",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **more,
    }


def oidc_section(issuer: Issuer, **more: Any) -> dict[str, Any]:
    """An ``[[oidc]]`` entry trusting ``issuer``: acme's main branch may push and read, acme's others read."""
    return {
        "name": "github",
        "issuer": issuer.url,
        "audience": AUDIENCE,
        "name_claim": "repository",
        "ca_file": str(issuer.ca),
        "rules": [
            {"claims": {"repository_owner": "acme", "ref": "refs/heads/main"}, "scopes": ["push", "read"]},
            {"claims": {"repository": "acme/*"}, "scopes": ["read"]},
        ],
        **more,
    }
