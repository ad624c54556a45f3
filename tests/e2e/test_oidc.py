"""OIDC ID tokens end to end: a local HTTPS issuer (tests/server/oidckit.py), the real daemon fetching its
discovery document and JWKS, and the real ``niks3 push --oidc``. Every bad token is a 401 naming the reason,
with nothing written; key rotation works after the refresh; cached keys outlive the issuer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import tomli_w
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from niks3d.client.main import main
from tests.client.storekit import build_fresh
from tests.server.bucketview import bucket_keys
from tests.server.oidckit import AUDIENCE, Issuer, github_claims, new_key, oidc_section
from tests.server.pushkit import PushKit, make_closure

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[Issuer]:
    directory = tmp_path / "issuer"
    directory.mkdir()
    issuer = Issuer(directory)
    yield issuer
    issuer.close()


@pytest.fixture
def oidc_daemon(make_daemon_config: Callable[..., Any], start_daemon: Callable[..., Any], issuer: Issuer) -> Any:
    def start(**more: Any) -> Any:
        daemon = make_daemon_config()
        daemon.settings["oidc"] = [oidc_section(issuer, **more)]
        daemon.config_path.write_text(tomli_w.dumps(daemon.settings))
        return start_daemon(daemon)

    return start


async def _owners(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["token_name"] for r in await conn.fetch("SELECT token_name FROM upload_sessions")]
    finally:
        await conn.close()


def _http(method: str, url: str, token: str, body: object = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _open_session(daemon: Any, token: str) -> tuple[int, dict[str, str], Any]:
    return _http("POST", f"{daemon.url}/api/v1/sessions", token, {"paths": []})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.nix
def test_a_github_token_for_an_allowed_repository_pushes(oidc_daemon, issuer, tmp_path, capsys, monkeypatch):
    daemon = oidc_daemon()
    path = build_fresh(tmp_path, "oidc-pushed", "echo pushed-with-oidc > $out")
    monkeypatch.setenv("NIKS3_ID_TOKEN", issuer.token(github_claims()))
    code = main(["push", "--json", "--no-progress", "--server", daemon.url, "--oidc", "env", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert path in json.loads(out)["published"]
    assert asyncio.run(_owners(daemon.dsn)) == ["oidc:github:acme/app"]
    # The GitHub way: the job's token endpoint, asked for the audience. A separate process, as in a job: the
    # client trusts the issuer's test CA through SSL_CERT_FILE (aiohttp reads it when it is imported).
    env = {
        **os.environ,
        "ACTIONS_ID_TOKEN_REQUEST_URL": issuer.github_url(),
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
        "SSL_CERT_FILE": str(issuer.ca),
    }
    env.pop("NIKS3_ID_TOKEN", None)
    argv = [sys.executable, "-m", "niks3d.client", "push", "--json", "--no-progress", "--server", daemon.url]
    argv += ["--oidc", "github", "--oidc-audience", AUDIENCE]
    other = build_fresh(tmp_path, "oidc-github", "echo pushed-from-github > $out")
    done = subprocess.run([*argv, other], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert other in json.loads(done.stdout)["published"]
    assert issuer.github_requests == 1
    # A repository outside the rules is refused, with the reason, and without showing the token.
    issuer.github_claims = {"repository": "evil/app", "repository_owner": "evil"}
    third = build_fresh(tmp_path, "oidc-evil", "echo evil > $out")
    done = subprocess.run([*argv, third], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "match no rule" in done.stderr, done.stderr
    assert "eyJ" not in done.stderr + done.stdout
    assert issuer.request_token not in done.stderr + done.stdout
    assert "eyJ" not in daemon.log()


def test_every_bad_token_is_a_401_naming_the_reason_and_nothing_is_written(oidc_daemon, issuer):
    daemon = oidc_daemon()
    before = bucket_keys(daemon.s3)
    now = int(time.time())
    good = issuer.token(github_claims())
    header, payload, signature = good.split(".")
    tampered_claims = {**jwt.decode(good, options={"verify_signature": False}), "repository": "acme/other"}
    # The classic confusion: the RS256 public key (which anyone can fetch) used as an HMAC secret.
    public_pem = issuer.keys["k1"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    hs256 = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + payload
    hs256 += "." + _b64(hmac.new(public_pem, hs256.encode(), hashlib.sha256).digest())
    cases = {
        "wrong audience": (issuer.token(github_claims(aud="https://other.test")), "audience"),
        "wrong issuer": (issuer.token(github_claims(iss="https://issuer.other")), "not configured"),
        "expired": (issuer.token(github_claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200)), "expired"),
        "not yet valid": (issuer.token(github_claims(nbf=now + 3600)), "not valid yet"),
        "unknown key": (issuer.token(github_claims(), "k9", key=new_key()), "unknown"),
        "alg none": (jwt.encode({"iss": issuer.url, **github_claims()}, None, algorithm="none"), "'none'"),
        "HS256 with the public key": (hs256, "HS256"),
        "claim outside the rules": (issuer.token(github_claims("evil/app")), "match no rule"),
        "no name claim": (issuer.token({**github_claims(), "repository": None}), "no 'repository' claim"),
        "tampered payload": (
            f"{header}.{_b64(json.dumps(tampered_claims).encode())}.{signature}",
            "signature",
        ),
        "signed by another issuer's key under a known kid": (
            issuer.token(github_claims(), "k1", key=new_key()),
            "signature",
        ),
    }
    code, _, answer = _open_session(daemon, good)
    assert code not in (401, 403), answer  # the good one passes authentication
    owners = asyncio.run(_owners(daemon.dsn))
    for what, (token, reason) in cases.items():
        code, headers, answer = _open_session(daemon, token)
        assert code == 401, (what, code, answer)
        assert reason in answer["message"], (what, answer)
        assert headers["WWW-Authenticate"].startswith("Bearer"), what
    assert asyncio.run(_owners(daemon.dsn)) == owners
    assert bucket_keys(daemon.s3) == before
    log = daemon.log()
    assert "eyJ" not in log and "Traceback" not in log


def test_key_rotation_and_an_issuer_outage(oidc_daemon, issuer):
    daemon = oidc_daemon(jwks_min_refresh=0)

    def status(kid: str) -> int:
        return _http("GET", f"{daemon.url}/api/v1/pins", issuer.token(github_claims(), kid))[0]

    assert status("k1") == 200 and status("k2") == 200  # RS256 and ES256
    fetches = issuer.jwks_fetches
    assert status("k1") == 200 and issuer.jwks_fetches == fetches  # cached: no fetch for a known kid
    # Rotation: k3 replaces k1 at the issuer; the first k3 token makes the daemon fetch the keys again.
    issuer.keys = {"k3": new_key("ES256"), "k2": issuer.keys["k2"]}
    assert status("k3") == 200 and issuer.jwks_fetches == fetches + 1
    # The issuer goes down: the keys already fetched keep working; an unknown kid fails cleanly.
    issuer.stop()
    assert status("k3") == 200 and status("k2") == 200
    issuer.keys["k4"] = new_key()
    code, _, answer = _http("GET", f"{daemon.url}/api/v1/pins", issuer.token(github_claims(), "k4"))
    assert code == 401 and "unknown" in answer["message"], answer
    issuer.start()
    assert status("k4") == 200
    assert "Traceback" not in daemon.log()


def test_a_repository_cannot_touch_another_repositorys_session(oidc_daemon, issuer, tmp_path):
    """docs/security.md rule 4 for OIDC identities: every repository of acme may push, each as itself. A token
    of acme/other reads, gets URLs for, reports, completes and aborts acme/app's session: 403 each time; acme/app
    then completes it untouched."""
    daemon = oidc_daemon()
    paths = make_closure(tmp_path, seed=16, n=2)

    async def attack() -> None:
        async with aiohttp.ClientSession() as http:
            victim = PushKit(http, daemon.url, issuer.token(github_claims("acme/app")))
            intruder = PushKit(http, daemon.url, issuer.token(github_claims("acme/other")))
            session = await victim.open(paths, paths[-1:])
            sid = session["session_id"]
            key = next(o["key"] for e in session["paths"] for o in e.get("objects", []) if o["kind"] == "nar")
            base = f"/api/v1/sessions/{sid}"
            refusals = [
                await intruder.call("GET", base, expect=(200, 403)),
                await intruder.call("POST", base + "/urls", {"objects": [{"key": key}]}, expect=(200, 403)),
                await intruder.call("POST", base + "/objects", {"objects": {}}, expect=(200, 403, 400)),
                await intruder.call("POST", base + "/complete", {"objects": {}}, expect=(200, 403, 422)),
                await intruder.call("DELETE", base, expect=(200, 403)),
            ]
            for body in refusals:
                assert body.get("error") == "forbidden", body
                assert "oidc:github:acme/other" in body["message"], body
            reports = await victim.upload(session, paths)
            done = await victim.complete(sid, reports)
            assert sorted(done["published"]) == sorted(p.path for p in paths), done

    asyncio.run(attack())
    assert asyncio.run(_owners(daemon.dsn)) == ["oidc:github:acme/app"]
