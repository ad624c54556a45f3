"""The verifier's memory of verified tokens (niks3d/server/oidc.py): a token verified once is not verified again
until its exp; refusals are never remembered; a changed token is a different token. Real keys and real
signatures; only the issuer's key source is replaced by one that counts its calls."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from niks3d.config import OidcSettings
from niks3d.errors import Unauthenticated
from niks3d.server.oidc import IssuerKeys, OidcVerifier

ISSUER = "https://issuer.test"
KEY = rsa.generate_private_key(65537, 2048)


class CountingKeys(IssuerKeys):
    def __init__(self, settings: OidcSettings) -> None:
        super().__init__(settings, None, ssl.create_default_context())  # type: ignore[arg-type]
        self.calls = 0

    async def key(self, kid: str) -> jwt.PyJWK:
        self.calls += 1
        return jwt.PyJWK(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "RS256")


def _token(**claims: Any) -> str:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": "cache", "sub": "repo:acme/app", "repository_owner": "acme", "iat": now}
    return jwt.encode({**base, "exp": now + 600, **claims}, KEY, algorithm="RS256", headers={"kid": "k1"})


def _verifier(clock: list[float]) -> tuple[OidcVerifier, CountingKeys]:
    settings = OidcSettings.model_validate(
        {
            "name": "ci",
            "issuer": ISSUER,
            "audience": "cache",
            "rules": [{"claims": {"repository_owner": "acme"}, "scopes": ["push"]}],
        }
    )
    keys = CountingKeys(settings)
    return OidcVerifier({ISSUER: keys}, clock=lambda: clock[0]), keys


def test_a_verified_token_is_remembered_until_its_exp() -> None:
    clock = [time.time()]
    verifier, keys = _verifier(clock)
    token = _token()
    first = asyncio.run(verifier.identify(token))
    assert asyncio.run(verifier.identify(token)) == first and keys.calls == 1
    assert first.name == "oidc:ci:repo:acme/app" and first.scopes == {"push"}
    clock[0] += 601  # past exp: verified again (here PyJWT's own clock still finds it valid)
    asyncio.run(verifier.identify(token))
    assert keys.calls == 2


def test_refusals_are_not_remembered_and_a_changed_token_is_verified() -> None:
    verifier, keys = _verifier([time.time()])
    outsider = _token(repository_owner="evil")
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="match no rule"):
            asyncio.run(verifier.identify(outsider))
    assert keys.calls == 2
    good = _token()
    asyncio.run(verifier.identify(good))
    header, payload, signature = good.split(".")
    with pytest.raises(Unauthenticated, match="signature"):
        asyncio.run(verifier.identify(f"{header}.{payload}.{signature[:-4]}AAAA"))
    assert keys.calls == 4
