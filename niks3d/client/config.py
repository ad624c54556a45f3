"""Where the ``niks3`` client finds its server URL, API token and TLS files.

The token is a secret, so it only ever comes from a file: ``--token-file``, then ``$NIKS3_TOKEN_FILE``, then
``$XDG_CONFIG_HOME/niks3/token`` (``~/.config/niks3/token``). The server URL comes from ``--server``, then
``$NIKS3_SERVER_URL``, then the first line of ``$XDG_CONFIG_HOME/niks3/server``. For an ``https://`` server, a
client certificate and its key (``--client-cert``/``--client-key``, ``$NIKS3_CLIENT_CERT``/``$NIKS3_CLIENT_KEY``,
``client.crt``/``client.key`` in the same directory) and the CA file to trust instead of the system's
(``--ca-file``, ``$NIKS3_CA_FILE``, ``ca.crt``) are used for the niks3d API only, never for S3
(docs/auth.md, "Client certificates"). This is the one module of the client that reads the environment or
configuration files; everything else receives a :class:`ClientConfig`.
"""

from __future__ import annotations

__all__ = [
    "ClientConfig",
    "Token",
    "config_dir",
    "config_from_args",
    "load_client_config",
    "normalize_server_url",
]

import argparse
import logging
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from niks3d.client.oidc import OidcSource
from niks3d.errors import ClientError

logger = logging.getLogger(__name__)

_MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class Token:
    """An API token and the file it came from; ``repr`` never shows the value."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"<token from {self.source}>"


@dataclass(frozen=True)
class ClientConfig:
    """What every client command needs: the server's base URL (no trailing ``/``) and the token, if any."""

    server_url: str
    token: Token | None
    # For an https:// server: what the API requests verify the server with and present as client certificate.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    # Where the TLS files came from, for messages (no secrets: file names only).
    tls_source: str | None = None
    # With --oidc: where the ID token comes from (then ``token`` is None); niks3d.client.oidc.
    oidc: OidcSource | None = None

    @property
    def api_url(self) -> str:
        """The base of the HTTP API, ``<server>/api/v1``."""
        return f"{self.server_url}/api/v1"


def config_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/niks3``, or ``~/.config/niks3`` when the variable is unset or not absolute."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if base and Path(base).is_absolute():
        return Path(base) / "niks3"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".config" / "niks3"


def normalize_server_url(url: str, source: str) -> str:
    """Check that ``url`` is an ``http(s)://host[:port][/prefix]`` URL and drop a trailing ``/``."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"server URL {text!r} from {source} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ClientError(f"server URL {text!r} from {source} must not have a query or fragment")
    if parts.username or parts.password:
        raise ClientError(f"server URL from {source} must not carry credentials; use a token file")
    return text.rstrip("/")


def _read_small_file(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise ClientError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ClientError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_TOKEN_BYTES:
        raise ClientError(f"{what} {path} is larger than {_MAX_TOKEN_BYTES} bytes; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(f"{what} {path} is not UTF-8 text") from None


def _warn_if_exposed(path: Path, environ: Mapping[str, str], what: str = "token file") -> None:
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and path.resolve().is_relative_to(Path(credentials).resolve()):
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s %s is accessible by group or others (mode %o); chmod 600 it", what, path, mode & 0o777)


def _load_token(path: Path, environ: Mapping[str, str]) -> Token:
    text = _read_small_file(path, "token file").strip()
    if not text:
        raise ClientError(f"token file {path} is empty")
    if any(ch.isspace() for ch in text) or not text.isprintable():
        raise ClientError(f"token file {path} must hold one token on one line, without spaces")
    _warn_if_exposed(path, environ)
    return Token(text, str(path))


def _resolve_token(token_file: str | None, environ: Mapping[str, str], required: bool) -> Token | None:
    if token_file:
        return _load_token(Path(token_file), environ)
    from_env = environ.get("NIKS3_TOKEN_FILE")
    if from_env:
        return _load_token(Path(from_env), environ)
    default = config_dir(environ) / "token"
    if default.exists():
        return _load_token(default, environ)
    if required:
        raise ClientError(f"no API token: pass --token-file, set NIKS3_TOKEN_FILE, or write the token to {default}")
    return None


def _resolve_server(server: str | None, environ: Mapping[str, str]) -> str:
    if server:
        return normalize_server_url(server, "--server")
    from_env = environ.get("NIKS3_SERVER_URL")
    if from_env:
        return normalize_server_url(from_env, "NIKS3_SERVER_URL")
    default = config_dir(environ) / "server"
    if default.exists():
        lines = [line.strip() for line in _read_small_file(default, "server file").splitlines()]
        first = next((line for line in lines if line and not line.startswith("#")), "")
        if not first:
            raise ClientError(f"server file {default} holds no URL")
        return normalize_server_url(first, str(default))
    raise ClientError(f"no server URL: pass --server, set NIKS3_SERVER_URL, or write the URL to {default}")


def _resolve_file(option: str | None, variable: str, default: Path, environ: Mapping[str, str]) -> Path | None:
    if option:
        return Path(option)
    from_env = environ.get(variable)
    if from_env:
        return Path(from_env)
    return default if default.exists() else None


class _EncryptedKeyError(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKeyError


def _tls_context(
    server_url: str,
    client_cert: str | None,
    client_key: str | None,
    ca_file: str | None,
    environ: Mapping[str, str],
) -> tuple[ssl.SSLContext | None, str | None, bool]:
    """The context for the API requests, where its files came from, and whether it presents a certificate.

    ``(None, None, False)`` when no TLS file is named: the system's trust store applies, as for any URL.
    """
    directory = config_dir(environ)
    cert = _resolve_file(client_cert, "NIKS3_CLIENT_CERT", directory / "client.crt", environ)
    key = _resolve_file(client_key, "NIKS3_CLIENT_KEY", directory / "client.key", environ)
    ca = _resolve_file(ca_file, "NIKS3_CA_FILE", directory / "ca.crt", environ)
    if cert is None and key is None and ca is None:
        return None, None, False
    if not server_url.startswith("https://"):
        named = ", ".join(str(p) for p in (cert, key, ca) if p is not None)
        raise ClientError(
            f"TLS files are set ({named}) but the server URL {server_url} is not https://; use an https:// URL"
        )
    if key is not None and cert is None:
        raise ClientError(f"a client key ({key}) needs its certificate: pass --client-cert or set NIKS3_CLIENT_CERT")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except FileNotFoundError:
        raise ClientError(f"CA file {ca} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise ClientError(f"CA file {ca} holds no usable PEM certificate: {exc}") from None
    if cert is not None:
        if key is not None:
            _warn_if_exposed(key, environ, "client key")
        try:
            context.load_cert_chain(cert, key, password=_no_passphrase)
        except _EncryptedKeyError:
            raise ClientError(f"the client key {key or cert} is encrypted; niks3 needs it unencrypted") from None
        except FileNotFoundError as exc:
            raise ClientError(f"client certificate or key {exc.filename or cert} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            raise ClientError(f"cannot use the client certificate {cert} with the key {key or cert}: {exc}") from None
    source = ", ".join(
        f"{what} {path}" for what, path in (("client certificate", cert), ("CA file", ca)) if path is not None
    )
    return context, source, cert is not None


def load_client_config(
    *,
    server: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    token_required: bool = True,
    client_cert: str | None = None,
    client_key: str | None = None,
    ca_file: str | None = None,
    oidc: str | None = None,
    oidc_audience: str | None = None,
    oidc_variable: str | None = None,
) -> ClientConfig:
    """Resolve the server URL, token and TLS files from the options, the environment and the config directory.

    With a client certificate the token is optional: the certificate may be all the server needs. With ``oidc``
    (``github``, ``gitlab`` or ``env``) an OIDC ID token is used instead of a token file; its audience defaults
    to the server URL. Raises :class:`ClientError` naming the option, variable or file to fix.
    """
    env = os.environ if environ is None else environ
    server_url = _resolve_server(server, env)
    context, tls_source, with_certificate = _tls_context(server_url, client_cert, client_key, ca_file, env)
    if oidc:
        if token_file:
            raise ClientError("pass either --token-file or --oidc, not both")
        source = OidcSource(oidc, oidc_audience or server_url, oidc_variable, env)
        return ClientConfig(server_url, None, context, tls_source, source)
    token = _resolve_token(token_file, env, token_required and not with_certificate)
    return ClientConfig(server_url, token, context, tls_source)


def config_from_args(args: argparse.Namespace, *, token_required: bool = True) -> ClientConfig:
    """:func:`load_client_config` from the common options (``--server``, ``--token-file``, TLS, ``--oidc...``)."""
    return load_client_config(
        server=args.server,
        token_file=args.token_file,
        token_required=token_required,
        client_cert=getattr(args, "client_cert", None),
        client_key=getattr(args, "client_key", None),
        ca_file=getattr(args, "ca_file", None),
        oidc=getattr(args, "oidc", None),
        oidc_audience=getattr(args, "oidc_audience", None),
        oidc_variable=getattr(args, "oidc_variable", None),
    )
