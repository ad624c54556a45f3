"""OIDC ID tokens for the client (``--oidc github|gitlab|env``): push from CI without a stored secret.

- ``github``: GitHub Actions' token endpoint, ``$ACTIONS_ID_TOKEN_REQUEST_URL`` with ``audience=<audience>``
  and ``$ACTIONS_ID_TOKEN_REQUEST_TOKEN`` as bearer (the job needs ``permissions: id-token: write``). A token
  is fetched again when it is within two minutes of its ``exp``, so a long push keeps working.
- ``gitlab``: an ``id_tokens`` variable of the job (``--oidc-variable``, default ``NIKS3_ID_TOKEN``).
- ``env``: any variable holding an ID token (``--oidc-variable``).

The token is never printed: ``repr`` and messages name only where it came from (docs/auth.md).
"""

from __future__ import annotations

__all__ = ["OIDC_PROVIDERS", "OidcSource"]

import asyncio
import time
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp

from niks3d.errors import ClientError

OIDC_PROVIDERS = ("github", "gitlab", "env")
DEFAULT_VARIABLE = "NIKS3_ID_TOKEN"
_REFRESH_BEFORE = 120.0  # seconds before exp when a GitHub token is fetched again
_TIMEOUT = aiohttp.ClientTimeout(total=30)


def _expiry(token: str) -> float | None:
    """The token's ``exp`` (unverified: the server verifies; this only decides when to fetch a new one)."""
    import jwt  # noqa: PLC0415 -- PyJWT and cryptography cost every run ~0.1 s of CPU to import

    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


class OidcSource:
    """Where the ID token comes from; :meth:`token` gives a current one."""

    def __init__(self, provider: str, audience: str, variable: str | None, environ: Mapping[str, str]) -> None:
        if provider not in OIDC_PROVIDERS:
            raise ClientError(f"--oidc must be one of {', '.join(OIDC_PROVIDERS)}, not {provider!r}")
        self.provider = provider
        self.audience = audience
        self.variable = variable or DEFAULT_VARIABLE
        self._environ = environ
        self._value: str | None = None
        self._expires: float | None = None
        self._lock = asyncio.Lock()
        if provider == "github":
            missing = [
                v for v in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN") if not environ.get(v)
            ]
            if missing:
                raise ClientError(
                    f"--oidc github needs {' and '.join(missing)}: run in GitHub Actions with "
                    "'permissions: id-token: write'"
                )
        elif not environ.get(self.variable, "").strip():
            raise ClientError(f"--oidc {provider}: ${self.variable} holds no ID token")

    @property
    def source(self) -> str:
        if self.provider == "github":
            return f"GitHub Actions' OIDC endpoint (audience {self.audience!r})"
        return f"${self.variable}"

    def __repr__(self) -> str:
        return f"<OIDC token from {self.source}>"

    def _fresh(self) -> bool:
        if self._value is None:
            return False
        if self.provider != "github" or self._expires is None:
            return True
        return time.time() < self._expires - _REFRESH_BEFORE

    async def token(self, http: aiohttp.ClientSession) -> str:
        async with self._lock:
            if not self._fresh():
                if self.provider == "github":
                    self._value = await self._fetch_github(http)
                else:
                    self._value = self._environ[self.variable].strip()
                self._expires = _expiry(self._value)
            assert self._value is not None
            return self._value

    async def _fetch_github(self, http: aiohttp.ClientSession) -> str:
        url = self._environ["ACTIONS_ID_TOKEN_REQUEST_URL"]
        url += ("&" if "?" in url else "?") + "audience=" + quote(self.audience, safe="")
        headers = {"Authorization": f"Bearer {self._environ['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"}
        try:
            async with http.get(url, headers=headers, timeout=_TIMEOUT) as response:
                if response.status != 200:
                    raise ClientError(f"GitHub's OIDC token endpoint answered {response.status}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClientError(f"cannot get an OIDC token from GitHub's endpoint: {exc.__class__.__name__}") from None
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise ClientError("GitHub's OIDC token endpoint answered without a token ('value')")
        return value
