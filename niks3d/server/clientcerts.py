"""Client certificates as identities: the ``[[tls.clients]]`` rules applied to a verified peer certificate.

OpenSSL has already checked the certificate (signed by ``tls.client_ca_file``, within its validity period:
:mod:`niks3d.tls`); what is left is who it names and what that one may do. Each rule matches one field:

- ``subject``: an RFC 4514 name, most specific part first (``CN=ci-*,O=Example``), whose attribute values are
  globs. It matches a subject with the same attributes in the same order, each value matching its glob. Values
  are compared unescaped, attribute by attribute, never as one string, so a crafted common name such as
  ``ci-x,O=Example`` stays one common name and cannot stand in for the organisation (:mod:`niks3d.tls`);
- ``dns``, ``uri``, ``email``: every subjectAltName entry of that kind, the glob against the whole value.

Globs are matched case-sensitively (:func:`fnmatch.fnmatchcase`); attribute types are not (``cn`` is ``CN``). The
scopes of every matching rule add up; the identity is named after the value the first matching rule matched,
``cert:<value>``. A certificate that matches no rule is refused with 403 (docs/auth.md, "Client certificates").
"""

from __future__ import annotations

__all__ = ["CertificateRules", "PeerCertificate", "certificate_rules_key"]

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from niks3d.config import TlsClientRule
from niks3d.tls import Attributes, parse_name, peer_subject, rfc4514

_SAN_KINDS = {"DNS": "dns", "URI": "uri", "email": "email"}


@dataclass(frozen=True)
class PeerCertificate:
    """What the rules look at in a verified client certificate."""

    attributes: Attributes  # the subject, RFC 4514 order: (("CN", "ci-1"), ("O", "Example"))
    alt_names: tuple[tuple[str, str], ...]  # (rule field, value): ("dns", "ci.example.org"), ("uri", ...)

    @classmethod
    def from_peercert(cls, peercert: Mapping[str, Any]) -> PeerCertificate:
        alt_names = tuple(
            (_SAN_KINDS[kind], value) for kind, value in peercert.get("subjectAltName", ()) if kind in _SAN_KINDS
        )
        return cls(peer_subject(peercert.get("subject", ())), alt_names)

    @property
    def subject(self) -> str:
        """The subject as an RFC 4514 string, values escaped."""
        return rfc4514(self.attributes)

    def matches(self, rule: TlsClientRule) -> str | None:
        """The value ``rule`` matched (the subject's string for a subject rule), or None."""
        if rule.field == "subject":
            pattern = parse_name(rule.pattern)
            if len(pattern) == len(self.attributes) and all(
                kind.upper() == want_kind and fnmatch.fnmatchcase(value, glob)
                for (kind, value), (want_kind, glob) in zip(self.attributes, pattern, strict=True)
            ):
                return self.subject
            return None
        for kind, value in self.alt_names:
            if kind == rule.field and fnmatch.fnmatchcase(value, rule.pattern):
                return value
        return None


@dataclass(frozen=True)
class CertificateMatch:
    """The outcome of the rules: a name, scopes and the trusted mark; ``scopes`` is empty when no rule matched."""

    name: str
    scopes: frozenset[str]
    trusted: bool


class CertificateRules:
    """The configured ``[[tls.clients]]`` rules."""

    def __init__(self, rules: Iterable[TlsClientRule]) -> None:
        self._rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, cert: PeerCertificate) -> CertificateMatch:
        name: str | None = None
        scopes: set[str] = set()
        trusted = False
        for rule in self._rules:
            value = cert.matches(rule)
            if value is not None:
                if name is None:
                    # A subjectAltName is shown as is, unless it holds controls (a subject is escaped already).
                    name = "cert:" + (value if value.isprintable() else value.encode("unicode_escape").decode())
                scopes.update(rule.scopes)
                trusted = trusted or rule.trusted
        return CertificateMatch(name or f"cert:{cert.subject}", frozenset(scopes), trusted)


certificate_rules_key: web.AppKey[CertificateRules] = web.AppKey("certificate_rules_key")
