"""HTTPS for ``niks3d serve``: the server's ``ssl.SSLContext`` from the ``[tls]`` files, and its reload on SIGHUP.

:func:`check_tls_files` loads the files the way the server will and says, file by file, what is wrong with them
(``niks3d check-config`` and :func:`niks3d.config.load_config` report it). :class:`ServerTls` holds the context
the listeners were started with; :meth:`ServerTls.reload` builds a complete new context from the same files and,
only if every file loaded, makes it the one new connections get. The listeners keep running: the context passed
to them selects the newest context in its ``sni_callback``, which OpenSSL calls for every ClientHello (with or
without SNI) before it picks a certificate or checks the client's. Connections already open keep the context
they started with. A reload that fails leaves the previous files in use (docs/auth.md, "Client certificates").

Names: :func:`peer_subject` turns the subject ``ssl.getpeercert()`` reports into attributes in RFC 4514 order
(most specific first, short type names such as ``CN``), :func:`rfc4514` writes them as a string with the special
characters of values escaped, and :func:`parse_name` reads such a string back (for the rules' subject patterns).

Client certificates are verified by OpenSSL against ``client_ca_file``: a certificate from another CA, or one
that has expired, fails the handshake. What an accepted certificate may do is decided per request by
:mod:`niks3d.server.clientcerts`.

:func:`trust_context` is the other direction: a client context that trusts the certificates of a CA bundle
instead of the system's (an OIDC issuer's ``ca_file``), or the reason the bundle cannot be used.
"""

from __future__ import annotations

__all__ = [
    "Attributes",
    "ServerTls",
    "TlsFiles",
    "check_tls_files",
    "parse_name",
    "peer_subject",
    "rfc4514",
    "server_context",
    "trust_context",
]

import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from niks3d.errors import ConfigError, ConfigProblem

logger = logging.getLogger(__name__)

# More than any real certificate chain or CA bundle; a larger file is the wrong file.
_MAX_FILE_BYTES = 4 * 1024 * 1024


Attributes = tuple[tuple[str, str], ...]

# The attribute types RFC 4514 gives short names, keyed by the names Python's ssl module reports.
_SHORT_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+")


def peer_subject(subject: Sequence[Sequence[tuple[str, str]]]) -> Attributes:
    """``getpeercert()["subject"]`` (RDNs in certificate order) as attributes in RFC 4514 order."""
    return tuple((_SHORT_NAMES.get(kind, kind), value) for rdn in reversed(subject) for kind, value in rdn)


def _escape(value: str) -> str:
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in '"+,;<>\\' or (ch == "#" and i == 0) or (ch == " " and i in (0, last)):
            out.append("\\" + ch)
        elif not ch.isprintable():  # NUL, newlines, controls: as hex pairs, so a name is always one line
            out.append("".join(f"\\{byte:02X}" for byte in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def rfc4514(attributes: Attributes) -> str:
    """``CN=ci-1,O=Example``: the attributes with the special characters of their values escaped (RFC 4514)."""
    return ",".join(f"{kind}={_escape(value)}" for kind, value in attributes)


def parse_name(text: str) -> Attributes:
    """An RFC 4514 string as attributes, values unescaped; ``+`` and ``,`` both separate attributes.

    Types are upper-cased (they are case-insensitive). Raises ValueError naming what is wrong.
    """
    attributes: list[tuple[str, str]] = []
    part: list[str] = []
    parts: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise ValueError(f"{text!r} ends in a lone backslash")
            pair = text[i + 1 : i + 3]
            if re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
                part.append(chr(int(pair, 16)))
                i += 3
            else:
                part.append(text[i + 1])
                i += 2
            continue
        if ch in ",+":
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
        i += 1
    parts.append("".join(part))
    for piece in parts:
        kind, sep, value = piece.partition("=")
        if not sep or not _TYPE.fullmatch(kind.strip()):
            raise ValueError(f"{text!r}: {piece!r} is not TYPE=value (such as CN=ci-*)")
        attributes.append((kind.strip().upper(), value))
    return tuple(attributes)


@dataclass(frozen=True)
class TlsFiles:
    """The ``[tls]`` files, resolved to absolute paths, and whether a client certificate is required."""

    certificate: Path
    key: Path
    client_ca: Path | None
    require_client_certificate: bool


class _EncryptedKeyError(Exception):
    """Raised from the password callback: niks3d never prompts for a key's passphrase."""


def _no_passphrase() -> str:
    raise _EncryptedKeyError


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        return None, f"{path} is a directory, not a file"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    if len(data) > _MAX_FILE_BYTES:
        return None, f"{path} is larger than {_MAX_FILE_BYTES} bytes; is it the right file?"
    return data, None


def _build(files: TlsFiles) -> tuple[ssl.SSLContext | None, list[tuple[str, str]]]:
    """The server context, or None and the problems as (key under ``tls``, reason)."""
    problems: list[tuple[str, str]] = []
    cert_data, problem = _read(files.certificate)
    if problem:
        problems.append(("certificate_file", problem))
    elif cert_data is not None and b"-----BEGIN CERTIFICATE-----" not in cert_data:
        problems.append(
            ("certificate_file", f"{files.certificate} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        )
    key_data, problem = _read(files.key)
    if problem:
        problems.append(("key_file", problem))
    elif key_data is not None:
        if b"ENCRYPTED" in key_data:
            problems.append(("key_file", f"{files.key} is encrypted; niks3d needs the key without a passphrase"))
        elif b"PRIVATE KEY-----" not in key_data:
            problems.append(("key_file", f"{files.key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A connection's identity is the certificate its handshake verified; no renegotiation may change it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    if not problems:
        try:
            context.load_cert_chain(files.certificate, files.key, password=_no_passphrase)
        except _EncryptedKeyError:
            problems.append(("key_file", f"{files.key} is encrypted; niks3d needs the key without a passphrase"))
        except ssl.SSLError as exc:
            problems.append(_chain_problem(files, exc))
    if files.client_ca is not None:
        ca_data, problem = _read(files.client_ca)
        if problem:
            problems.append(("client_ca_file", problem))
        elif ca_data is not None:
            try:
                context.load_verify_locations(cafile=files.client_ca)
            except ssl.SSLError:
                problems.append(("client_ca_file", f"{files.client_ca} holds no PEM certificate"))
            else:
                if context.cert_store_stats()["x509_ca"] == 0:
                    problems.append(
                        (
                            "client_ca_file",
                            f"{files.client_ca} holds no CA certificate (basicConstraints CA:TRUE); "
                            "name the CA that signs the client certificates, not a client certificate",
                        )
                    )
        context.verify_mode = ssl.CERT_REQUIRED if files.require_client_certificate else ssl.CERT_OPTIONAL
    return (None, problems) if problems else (context, [])


def _chain_problem(files: TlsFiles, exc: ssl.SSLError) -> tuple[str, str]:
    """Which of the two files ``load_cert_chain`` refused, and why."""
    reason = getattr(exc, "reason", None) or str(exc)
    if "KEY_VALUES_MISMATCH" in str(reason).upper():
        return ("key_file", f"{files.key} is not the private key of the certificate in {files.certificate}")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=files.certificate)
    except ssl.SSLError:
        return ("certificate_file", f"{files.certificate} is not a valid PEM certificate ({reason})")
    return ("key_file", f"{files.key} is not a valid PEM private key ({reason})")


def trust_context(ca: Path) -> tuple[ssl.SSLContext | None, str | None]:
    """A client context trusting the PEM certificates in ``ca`` (not the system's), or None and why not."""
    data, problem = _read(ca)
    if problem:
        return None, problem
    if data is None or b"-----BEGIN CERTIFICATE-----" not in data:
        return None, f"{ca} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        # With cadata, create_default_context trusts only these certificates, not the system's.
        context = ssl.create_default_context(cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        return None, f"{ca} is not a valid PEM certificate bundle ({getattr(exc, 'reason', None) or exc})"
    if context.cert_store_stats()["x509"] == 0:
        return None, f"{ca} holds no usable certificate"
    return context, None


def check_tls_files(files: TlsFiles) -> list[tuple[str, str]]:
    """What is wrong with the files, as (key under ``tls``, reason); ``[]`` when the server can use them."""
    return _build(files)[1]


def server_context(files: TlsFiles, *, source: str) -> ssl.SSLContext:
    """A server context from ``files``; raises ConfigError naming ``source`` (the config file) and each bad file."""
    context, problems = _build(files)
    if context is None:
        raise ConfigError([ConfigProblem(source, f"tls.{key}", reason) for key, reason in problems])
    return context


class ServerTls:
    """The listeners' context, and the newest context built from the files (see the module docstring)."""

    def __init__(self, files: TlsFiles, *, source: str) -> None:
        self.files = files
        self.source = source
        self.context = server_context(files, source=source)
        self._current = self.context
        self.context.sni_callback = self._select
        self.reloads = 0

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self._current
        if current is not self.context:
            connection.context = current

    def reload(self) -> None:
        """Load the files again and use them for new connections; raises ConfigError (and keeps the old ones)."""
        context = server_context(self.files, source=self.source)
        self._current = context
        self.reloads += 1
