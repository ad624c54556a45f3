"""Where the ``niks3`` client finds its server URL and API token.

The token is a secret, so it only ever comes from a file: ``--token-file``, then ``$NIKS3_TOKEN_FILE``, then
``$XDG_CONFIG_HOME/niks3/token`` (``~/.config/niks3/token``). The server URL comes from ``--server``, then
``$NIKS3_SERVER_URL``, then the first line of ``$XDG_CONFIG_HOME/niks3/server``. This is the one module of the
client that reads the environment or configuration files; everything else receives a :class:`ClientConfig`.
"""

from __future__ import annotations

__all__ = ["ClientConfig", "Token", "config_dir", "load_client_config", "normalize_server_url"]

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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


def _warn_if_exposed(path: Path, environ: Mapping[str, str]) -> None:
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and path.resolve().is_relative_to(Path(credentials).resolve()):
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s is accessible by group or others (mode %o); chmod 600 it", path, mode & 0o777)


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


def load_client_config(
    *,
    server: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    token_required: bool = True,
) -> ClientConfig:
    """Resolve the server URL and token from the options, the environment and the config directory.

    Raises :class:`ClientError` naming the option, variable or file to fix.
    """
    env = os.environ if environ is None else environ
    return ClientConfig(_resolve_server(server, env), _resolve_token(token_file, env, token_required))
