"""Bearer-token authentication with scopes. Tokens come from files (via the config), are compared in
constant time, and are never logged: only their names are."""

from __future__ import annotations

__all__ = ["TokenTable", "require"]

import hmac
from collections.abc import Iterable

from aiohttp import web

from niks3d.config import Token
from niks3d.errors import ApiError
from niks3d.server.keys import token_key, tokens_key


class TokenTable:
    """The configured tokens; ``find`` checks a presented secret against every one in constant time."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = tuple(tokens)

    def find(self, presented: bytes) -> Token | None:
        found = None
        for token in self._tokens:
            # compare_digest against every token, so timing says nothing about which one matched
            if hmac.compare_digest(token.secret, presented):
                found = token
        return found


def _presented(request: web.Request) -> bytes | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
    return value.strip().encode()


def require(request: web.Request, *scopes: str) -> Token:
    """The request's token if it has one of ``scopes`` (``admin`` has them all); 401/403 otherwise."""
    presented = _presented(request)
    if presented is None:
        raise ApiError(401, "unauthorized", "this endpoint needs a token: send 'Authorization: Bearer <token>'")
    token = request.app[tokens_key].find(presented)
    if token is None:
        raise ApiError(401, "unauthorized", "the token is not known to this server")
    if "admin" not in token.scopes and not token.scopes.intersection(scopes):
        raise ApiError(
            403,
            "forbidden",
            f"token {token.name!r} lacks the scope for this: needs {' or '.join(scopes)}",
        )
    request[token_key] = token
    return token
