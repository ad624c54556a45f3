"""Authentication and scopes: the one check every route makes, and the identity it yields.

:func:`require` is what every handler calls (``require(request, "push")``); :func:`permits` is the same check
as a yes/no, for pages that only show more to a reader. Both read the ``Authorization`` header, in either form,
on every surface:

- ``Bearer <token>`` (the ``niks3`` client, curl, Prometheus);
- HTTP Basic with the token as the password and any user name (what Nix sends from its ``netrc-file``,
  pre-emptively on every request: docs/protocol.md 5.1).

An :class:`Identity` is who the credentials name; it is small on purpose so that other ways of proving who one
is (an OIDC subject, a client certificate) can fill the same three fields:

- ``kind``: how the identity was proven; ``"token"`` for a configured token, ``"oidc"`` for an OIDC ID token
  (verified by :mod:`niks3d.server.oidc`'s middleware before the handler runs, since keys may need fetching),
  ``"cert"`` for a client certificate that a ``[[tls.clients]]`` rule matched (:mod:`niks3d.server.clientcerts`);
- ``name``: who it is, for the logs and for what it owns (sessions, pins, GC runs record it); for a token, its
  configured name; for an OIDC token ``oidc:<issuer name>:<name claim>``; for a certificate ``cert:<the subject
  or subjectAltName the rule matched>``. It is never a secret;
- ``scopes``: what it may do (``push``, ``read``, ``pin``, ``gc``, ``metrics``; ``admin`` may do them all).

The ``Authorization`` header wins: a client certificate is looked at only when a request carries no header, so
a reader can connect with a certificate and still act with a token (docs/auth.md, "Client certificates").

A refusal raises :class:`~niks3d.errors.Unauthenticated` (401: no, unusable or unknown credentials) or
:class:`~niks3d.errors.Forbidden` (403: a known identity without the scope). :mod:`niks3d.server.errors` turns
them into the answer of the request's surface: JSON with ``WWW-Authenticate: Bearer`` under ``/api``, plain text
with ``WWW-Authenticate: Basic`` for what Nix, Prometheus and browsers read. Token values are compared in
constant time and never logged; refusals are logged with the identity's name only.
"""

from __future__ import annotations

__all__ = [
    "Identity",
    "TokenTable",
    "identity_key",
    "oidc_result_key",
    "permits",
    "presented_secret",
    "require",
    "tokens_key",
]

import base64
import binascii
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from niks3d.errors import AccessDenied, Forbidden, Unauthenticated
from niks3d.secrets import Token
from niks3d.server.clientcerts import PeerCertificate, certificate_rules_key

logger = logging.getLogger(__name__)

IdentityKind = Literal["token", "oidc", "cert"]


@dataclass(frozen=True)
class Identity:
    """Who a request's credentials name (see the module docstring for the fields)."""

    kind: IdentityKind
    name: str
    scopes: frozenset[str]
    # A trusted writer's NARs are shared after the size check alone when s3.verify = "size" (docs/security.md).
    trusted: bool = False

    def allows(self, *scopes: str) -> bool:
        """Whether this identity has one of ``scopes`` (``admin`` has them all)."""
        return "admin" in self.scopes or not self.scopes.isdisjoint(scopes)


class TokenTable:
    """The configured tokens; ``find`` checks a presented secret against every one in constant time."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = tuple(tokens)

    def find(self, presented: bytes) -> Identity | None:
        found = None
        for token in self._tokens:
            # compare_digest against every token, so timing says nothing about which one matched
            if hmac.compare_digest(token.secret, presented):
                found = token
        return (
            None
            if found is None
            else Identity(kind="token", name=found.name, scopes=found.scopes, trusted=found.trusted)
        )


tokens_key: web.AppKey[TokenTable] = web.AppKey("tokens_key")
# The identity that authenticated the request, set by require().
identity_key: web.RequestKey[Identity] = web.RequestKey("identity_key")
# What niks3d.server.oidc's middleware found for a request carrying a JWT: its Identity, or the refusal to raise.
oidc_result_key: web.RequestKey[Identity | Unauthenticated] = web.RequestKey("oidc_result_key")

_MALFORMED = "the Authorization header must be 'Bearer <token>' or HTTP Basic with the token as password"


def presented_secret(request: web.Request) -> bytes | None:
    """The secret in the ``Authorization`` header (a Bearer token or a Basic password); None without the header.

    Tokens are printable ASCII (niks3d.secrets checks them), so anything else cannot be one: it is refused
    here with a message, whatever bytes the header holds.
    """
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value.isascii() or not value.isprintable():
        raise Unauthenticated("the Authorization header holds bytes that are not printable ASCII")
    scheme = scheme.lower()
    if scheme == "bearer" and value:
        return value.encode("ascii")
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Unauthenticated("the Authorization header's Basic credentials are not valid base64") from None
        _user, colon, password = decoded.partition(b":")
        if colon and password:
            return password
        raise Unauthenticated("the Basic credentials must be 'user:token' with the token as password")
    raise Unauthenticated(_MALFORMED)


def _certificate_identity(request: web.Request) -> Identity | None:
    """The identity of the request's verified client certificate, or None without one (or without rules).

    Raises Forbidden for a certificate that no ``[[tls.clients]]`` rule matches.
    """
    rules = request.app.get(certificate_rules_key)
    transport = request.transport
    if not rules or transport is None:
        return None
    peercert = transport.get_extra_info("peercert")
    if not peercert:
        return None
    cert = PeerCertificate.from_peercert(peercert)
    found = rules.match(cert)
    if not found.scopes:
        logger.info("refused %s %s to certificate %r: it matches no rule", request.method, request.path, cert.subject)
        raise Forbidden(f"the client certificate {cert.subject!r} matches no [[tls.clients]] rule of this server")
    return Identity(kind="cert", name=found.name, scopes=found.scopes, trusted=found.trusted)


def _identify(request: web.Request, scopes: tuple[str, ...]) -> Identity:
    presented = presented_secret(request)
    needs = " or ".join(scopes)
    if presented is None:
        identity = _certificate_identity(request)
        if identity is None:
            with_cert = " (or a client certificate)" if request.app.get(certificate_rules_key) else ""
            raise Unauthenticated(
                f"this endpoint needs a token{with_cert} with the {needs} scope: send 'Authorization: Bearer <token>' "
                "or the token as HTTP Basic password"
            )
    else:
        oidc = request.get(oidc_result_key)
        if isinstance(oidc, Unauthenticated):
            raise oidc
        found = oidc if oidc is not None else request.app[tokens_key].find(presented)
        if found is None:
            raise Unauthenticated("the token is not known to this server")
        identity = found
    if not identity.allows(*scopes):
        logger.info(
            "refused %s %s to %s %r: needs %s", request.method, request.path, identity.kind, identity.name, needs
        )
        raise Forbidden(f"{identity.kind} {identity.name!r} lacks the scope for this: needs {needs}")
    return identity


def require(request: web.Request, *scopes: str) -> Identity:
    """The request's identity if it has one of ``scopes`` (``admin`` has them all); raises AccessDenied if not."""
    identity = _identify(request, scopes)
    request[identity_key] = identity
    return identity


def permits(request: web.Request, *scopes: str) -> bool:
    """Whether the request carries credentials with one of ``scopes``; never raises for bad credentials."""
    try:
        require(request, *scopes)
    except AccessDenied:
        return False
    return True
