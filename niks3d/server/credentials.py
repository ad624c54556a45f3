"""Tokens presented as ``Bearer`` or as the password of HTTP Basic, for the read proxy and ``/metrics``.

Nix sends credentials from its ``netrc-file`` as HTTP Basic, pre-emptively on every request (protocol.md 5.1),
and Prometheus can send either; the API endpoints keep to Bearer (:mod:`niks3d.server.auth`). A refusal is a
401 with ``WWW-Authenticate: Basic`` (so browsers and curl ask for credentials), or a 403 for a known token
without the scope. Token values are compared in constant time by :class:`~niks3d.server.auth.TokenTable` and
never logged.
"""

from __future__ import annotations

__all__ = ["CHALLENGE", "authorize", "presented_secret"]

import base64
import binascii

from aiohttp import web

from niks3d.server.keys import tokens_key

CHALLENGE = 'Basic realm="niks3d", charset="UTF-8"'


def presented_secret(request: web.Request) -> bytes | None:
    """The secret in the ``Authorization`` header: a Bearer token or a Basic password; None without one.

    A header that is present but unusable gives ``b""``, which matches no token.
    """
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.encode()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return b""
        _user, colon, password = decoded.partition(b":")
        return password if colon else b""
    return b""


def _refusal(status: int, text: str) -> web.Response:
    headers = {"WWW-Authenticate": CHALLENGE} if status == 401 else None
    return web.Response(status=status, text=text + "\n", headers=headers)


def authorize(request: web.Request, scope: str) -> web.Response | None:
    """None if the request carries a token with ``scope`` (or ``admin``), else the 401/403 answer to send."""
    secret = presented_secret(request)
    if secret is None:
        return _refusal(401, f"credentials needed: a token with the {scope} scope, as Bearer or as Basic password")
    token = request.app[tokens_key].find(secret) if secret else None
    if token is None:
        return _refusal(401, "the credentials are not known to this server")
    if scope not in token.scopes and "admin" not in token.scopes:
        return _refusal(403, f"token {token.name!r} lacks the {scope} scope")
    return None
