"""OIDC ID tokens (GitHub Actions, GitLab CI) as bearer tokens: verification and the issuers' keys.

A bearer token (or Basic password) shaped like a JWT is verified here, before the handler runs, because the
issuer's keys may have to be fetched (:func:`oidc_middleware`); :func:`niks3d.server.auth.require` then uses
the result like any other identity. docs/auth.md describes the configuration and what is checked:

- the header's ``alg`` is RS256 or ES256 (never ``none``, never an HMAC algorithm) and names a ``kid``;
- the unverified ``iss`` picks the configured issuer; the key is that issuer's, by ``kid``;
- PyJWT checks the signature, ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` with the configured leeway;
- the claims must match every pattern of at least one rule; the scopes of every matching rule add up.

Keys come from the issuer's discovery document and JWKS over HTTPS (:class:`IssuerKeys`): fetched on first
use, again when older than ``jwks_max_age`` and when a token names an unknown ``kid`` (at most every
``jwks_min_refresh``). Keys once fetched keep working while the issuer cannot be reached. Tokens are never
logged; refusals name the issuer and the reason.
"""

from __future__ import annotations

__all__ = ["IssuerKeys", "OidcVerifier", "looks_like_jwt", "oidc_context", "oidc_key", "oidc_middleware"]

import asyncio
import fnmatch
import hashlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from niks3d.config import Config, OidcSettings
from niks3d.errors import ConfigError, ConfigProblem, Unauthenticated
from niks3d.secrets import oidc_ca_path
from niks3d.server.auth import Identity, oidc_result_key, presented_secret
from niks3d.tls import trust_context

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_DOCUMENT_BYTES = 1024 * 1024


def looks_like_jwt(value: bytes) -> bool:
    """A compact JWS: three base64url parts, the first a JSON object (``eyJ`` is ``{"``)."""
    return value.startswith(b"eyJ") and value.count(b".") == 2


class IssuerKeys:
    """One issuer's signing keys, fetched from its JWKS (found through its discovery document) and cached."""

    def __init__(self, settings: OidcSettings, session: aiohttp.ClientSession, ssl_context: ssl.SSLContext) -> None:
        self.settings = settings
        self._session = session
        self._ssl = ssl_context
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # when the keys were last fetched successfully
        self._attempted_at: float | None = None  # when a fetch was last tried
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        if not url.startswith("https://"):
            raise ValueError(f"{url!r} is not an https:// URL")
        async with self._session.get(url, ssl=self._ssl, timeout=_FETCH_TIMEOUT, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            body = await response.content.read(_MAX_DOCUMENT_BYTES + 1)
            if len(body) > _MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered with more than {_MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer with a JSON object")
        return document

    async def _fetch(self) -> None:
        issuer = self.settings.issuer
        discovery = await self._get_json(f"{issuer}/.well-known/openid-configuration")
        if discovery.get("issuer", "").rstrip("/") != issuer:
            raise ValueError(f"the discovery document names issuer {discovery.get('issuer')!r}")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        document = await self._get_json(jwks_uri)
        keys: dict[str, jwt.PyJWK] = {}
        for item in document.get("keys", []):
            if not isinstance(item, dict) or not isinstance(item.get("kid"), str) or item.get("use", "sig") != "sig":
                continue
            if item.get("kty") not in _KEY_TYPES.values():
                continue
            try:
                keys[item["kid"]] = jwt.PyJWK(item)
            except jwt.PyJWTError as exc:
                logger.warning("OIDC issuer %s: skipping key %r: %s", issuer, item["kid"], exc)
        if not keys:
            raise ValueError(f"{jwks_uri} holds no usable RSA or EC signing key")
        self._keys = keys
        self._fetched_at = time.monotonic()
        logger.info("OIDC issuer %s: fetched %d keys (%s)", issuer, len(keys), ", ".join(sorted(keys)))

    async def _refresh(self, why: str) -> None:
        """Fetch the keys unless one was tried within ``jwks_min_refresh`` (the first fetch is never held back).

        Requests that wait on the lock while another fetches find the attempt made and do not fetch again.
        """
        decided = time.monotonic()
        async with self._lock:
            attempted = self._attempted_at
            if attempted is not None and (
                attempted >= decided or decided - attempted < self.settings.jwks_min_refresh.total_seconds()
            ):
                return
            self._attempted_at = time.monotonic()
            try:
                await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                logger.warning("OIDC issuer %s: cannot fetch keys (%s): %s", self.settings.issuer, why, exc)

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``; fetches the keys when they are old or ``kid`` is new to them (rate-limited)."""
        if self._fetched_at is None:
            await self._refresh("first use")
        elif time.monotonic() - self._fetched_at > self.settings.jwks_max_age.total_seconds():
            await self._refresh("the keys are old")
        if kid not in self._keys:
            await self._refresh(f"unknown kid {kid!r}")
        found = self._keys.get(kid)
        if found is None:
            if self._fetched_at is None:
                raise Unauthenticated(f"the keys of OIDC issuer {self.settings.issuer} cannot be fetched")
            raise Unauthenticated(f"the token is signed by key {kid!r}, unknown to OIDC issuer {self.settings.issuer}")
        return found


def _claim_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return None


def _scopes_for(settings: OidcSettings, claims: Mapping[str, object]) -> frozenset[str]:
    scopes: set[str] = set()
    for rule in settings.rules:
        texts = {name: _claim_text(claims.get(name)) for name in rule.claims}
        if all(
            text is not None and fnmatch.fnmatchcase(text, pattern)
            for text, pattern in zip(texts.values(), rule.claims.values(), strict=True)
        ):
            scopes.update(rule.scopes)
    return frozenset(scopes)


# Verified tokens are remembered by their SHA-256 until their exp, so that the calls of one push (open, URLs,
# reports, complete) verify the signature once: about 1 ms of CPU each for RS256 and ES256 (docs/auth.md).
_VERIFIED_MAX = 4096


class OidcVerifier:
    """The configured issuers; :meth:`identify` turns a JWT into an Identity or raises Unauthenticated."""

    def __init__(self, issuers: Mapping[str, IssuerKeys], *, clock: Callable[[], float] = time.time) -> None:
        self.issuers = dict(issuers)
        self._clock = clock
        self._verified: dict[bytes, tuple[Identity, float]] = {}  # sha256(token) -> (identity, exp)

    async def identify(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        known = self._verified.get(digest)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[digest]
        identity, exp = await self._verify(token)
        if now < exp:
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified = {d: v for d, v in self._verified.items() if now < v[1]}
                while len(self._verified) >= _VERIFIED_MAX:
                    del self._verified[next(iter(self._verified))]  # the oldest entry
            self._verified[digest] = (identity, exp)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a well-formed JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"the token's algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token's header names no key (kid)")
        iss = unverified.get("iss")
        keys = self.issuers.get(iss.rstrip("/")) if isinstance(iss, str) else None
        if keys is None:
            raise Unauthenticated(f"the token's issuer {iss!r} is not configured here")
        settings = keys.settings
        key = await keys.key(kid)
        if key.key_type != _KEY_TYPES[alg]:
            raise Unauthenticated(f"key {kid!r} is a {key.key_type} key, which cannot verify {alg}")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the token is not for this server: its audience must be {settings.audience!r}"
            ) from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is refused: {exc}") from None
        # The name claim names the identity that owns sessions (docs/security.md, rule 4). Without it the token
        # is refused rather than named by another claim, whose values could equal another writer's name.
        subject = _claim_text(claims.get(settings.name_claim))
        if not subject:
            raise Unauthenticated(
                f"the token has no {settings.name_claim!r} claim, which names the identity for OIDC issuer "
                f"{settings.name!r}"
            )
        scopes = _scopes_for(settings, claims)
        name = f"oidc:{settings.name}:{subject}"
        if not scopes:
            logger.info("refused OIDC token of %r: its claims match no rule of issuer %s", name, settings.issuer)
            raise Unauthenticated(f"the token's claims ({subject}) match no rule of OIDC issuer {settings.name!r}")
        exp = claims["exp"]
        return Identity(kind="oidc", name=name, scopes=scopes), float(exp) if isinstance(exp, int | float) else 0.0


oidc_key: web.AppKey[OidcVerifier] = web.AppKey("oidc_key")


def _ssl_context(settings: OidcSettings, index: int, source: Path) -> ssl.SSLContext:
    if settings.ca_file is None:
        return ssl.create_default_context()
    # load_config has loaded the same file (niks3d.secrets); a file changed since then fails here by name.
    context, problem = trust_context(oidc_ca_path(settings.ca_file, source.parent))
    if context is None:
        raise ConfigError([ConfigProblem(str(source), f"oidc[{index}].ca_file", problem or "unusable")])
    return context


def oidc_context(config: Config) -> Any:
    """The cleanup context that holds the HTTP session for fetching keys and the verifier."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[oidc_key] = OidcVerifier(
                {
                    s.issuer: IssuerKeys(s, session, _ssl_context(s, index, config.source))
                    for index, s in enumerate(config.settings.oidc)
                }
            )
            yield

    return context


@web.middleware
async def oidc_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify a JWT in the Authorization header before the handler's ``require`` looks at it."""
    verifier = request.app.get(oidc_key)
    if verifier is not None:
        try:
            presented = presented_secret(request)
        except Unauthenticated:
            presented = None  # require() raises it again, with its message
        if presented is not None and looks_like_jwt(presented):
            try:
                request[oidc_result_key] = await verifier.identify(presented.decode("ascii"))
            except Unauthenticated as exc:
                logger.info("refused an OIDC token for %s %s: %s", request.method, request.path, exc)
                request[oidc_result_key] = exc
    return await handler(request)
