"""The secrets a configuration names by file: where each file is found, how it is read, and what it must hold.

Secrets are never inline in the TOML; every one is a path (``*_file``). A relative path is resolved against
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) when that is set, else against the configuration
file's directory. A file readable by group or others is used, with a warning, unless it sits under
``$CREDENTIALS_DIRECTORY``. Problems are collected per setting (a location such as ``("tokens", 1, "file")``)
so that :func:`niks3d.config.load_config` can report them all at once; no message ever carries a secret.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from niks3d.nix.errors import InvalidSigningKey
from niks3d.nix.signing import SecretKey
from niks3d.tls import TlsFiles, check_tls_files, trust_context

__all__ = ["Loc", "SecretFiles", "Secrets", "Token", "format_loc", "oidc_ca_path", "resolve_secret_path"]

logger = logging.getLogger(__name__)

Loc = tuple[str | int, ...]

MIN_TOKEN_LENGTH = 16
_MAX_SECRET_BYTES = 64 * 1024  # a secret file larger than this is a mistake (a NAR, a device)


def format_loc(loc: Loc) -> str:
    """``("tokens", 1, "file")`` as ``tokens[1].file``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Token:
    """An API token: its name (for logs), the secret a client presents, and the scopes it grants."""

    name: str
    secret: bytes = field(repr=False)
    scopes: frozenset[str]
    # Its uploads count as present after the size check alone, when s3.verify = "size" (docs/security.md).
    trusted: bool = False


@dataclass(frozen=True)
class Secrets:
    """Everything read from secret files; empty when the configuration was checked without opening them."""

    tokens: tuple[Token, ...]
    signing_keys: tuple[SecretKey, ...]
    s3_access_key_id: str | None
    s3_secret_access_key: str | None = field(repr=False)
    database_password: str | None = field(repr=False)
    # The [tls] files, resolved and checked (niks3d.tls); None without [tls].
    tls: TlsFiles | None = None

    @classmethod
    def empty(cls) -> Secrets:
        return cls(
            tokens=(),
            signing_keys=(),
            s3_access_key_id=None,
            s3_secret_access_key=None,
            database_password=None,
        )


def resolve_secret_path(name: str | os.PathLike[str], *, config_dir: Path, credentials_dir: Path | None) -> Path:
    """An absolute name as is; a relative one under ``credentials_dir`` if set, else under ``config_dir``."""
    path = Path(name)
    if path.is_absolute():
        return path
    return (credentials_dir if credentials_dir is not None else config_dir) / path


def oidc_ca_path(name: str | os.PathLike[str], config_dir: Path) -> Path:
    """An OIDC issuer's ``ca_file``: not a secret, so relative to the configuration's directory only."""
    return config_dir / name


def _strip_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def _token_problem(token: str) -> str | None:
    if not token:
        return "the token file is empty"
    if any(ch.isspace() for ch in token):
        return "the token contains whitespace"
    if not all(ch.isascii() and ch.isprintable() for ch in token):
        return "the token contains characters other than printable ASCII"
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the token is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} "
            "(for example the output of `openssl rand -hex 32`)"
        )
    return None


def _line_problem(text: str, *, spaces_allowed: bool) -> str | None:
    if not text:
        return "the file is empty"
    if "\n" in text or "\r" in text or "\0" in text:
        return "the file must hold a single line"
    if not spaces_allowed and any(ch.isspace() for ch in text):
        return "the value contains whitespace"
    return None


class SecretFiles:
    """Reads the secret files a (possibly invalid) raw configuration names and records what is wrong.

    :meth:`read_all` works on the merged TOML and environment data before validation, so that secret problems
    are reported together with validation problems; :meth:`secrets` builds the result for a validated
    :class:`~niks3d.config.Settings` once nothing was wrong.
    """

    def __init__(self, *, config_dir: Path, credentials_dir: Path | None) -> None:
        self.config_dir = config_dir
        self.credentials_dir = credentials_dir
        self.problems: list[tuple[Loc, str]] = []
        self._lines: dict[Loc, str] = {}
        self._tokens: dict[int, bytes] = {}
        self._keys: dict[int, SecretKey] = {}
        self.tls_files: TlsFiles | None = None

    def _under_credentials(self, path: Path) -> bool:
        if self.credentials_dir is None:
            return False
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.credentials_dir))

    def _read(self, loc: Loc, name: object) -> str | None:
        """The text of the file named ``name`` at ``loc``, or None after recording why it cannot be read."""
        if not isinstance(name, str) or not name:
            return None  # the validation problem for this setting is reported elsewhere
        path = resolve_secret_path(name, config_dir=self.config_dir, credentials_dir=self.credentials_dir)
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                self.problems.append((loc, f"{path} is not a regular file"))
                return None
            with open(path, "rb") as handle:
                data = handle.read(_MAX_SECRET_BYTES + 1)
        except OSError as exc:
            self.problems.append((loc, f"cannot read {path}: {exc.strerror}"))
            return None
        if len(data) > _MAX_SECRET_BYTES:
            self.problems.append((loc, f"{path} is larger than {_MAX_SECRET_BYTES} bytes; is it the right file?"))
            return None
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) and not self._under_credentials(path):
            logger.warning(
                "%s: secret file %s is readable by group or others (mode %04o); make it 0600 or pass it "
                "with systemd LoadCredential=",
                format_loc(loc),
                path,
                stat.S_IMODE(st.st_mode),
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append((loc, f"{path} is not UTF-8 text"))
            return None

    def _read_line(self, loc: Loc, name: object, *, spaces_allowed: bool) -> None:
        text = self._read(loc, name)
        if text is None:
            return
        value = _strip_newline(text)
        problem = _line_problem(value, spaces_allowed=spaces_allowed)
        if problem:
            self.problems.append((loc, problem))
        else:
            self._lines[loc] = value

    def _read_signing_keys(self, names: Sequence[object]) -> None:
        first_by_name: dict[str, int] = {}
        for index, name in enumerate(names):
            loc: Loc = ("signing", "key_files", index)
            text = self._read(loc, name)
            if text is None:
                continue
            try:
                key = SecretKey.parse(text)
            except InvalidSigningKey as exc:
                self.problems.append((loc, str(exc)))
                continue
            if key.name in first_by_name:
                other = format_loc(("signing", "key_files", first_by_name[key.name]))
                self.problems.append(
                    (
                        loc,
                        f"key name {key.name!r} is also used by {other}; Nix finds keys by name: give each its own",
                    )
                )
                continue
            first_by_name[key.name] = index
            self._keys[index] = key

    def _read_tokens(self, tokens: Sequence[object]) -> None:
        first_by_secret: dict[bytes, int] = {}
        for index, token in enumerate(tokens):
            if not isinstance(token, Mapping):
                continue
            loc: Loc = ("tokens", index, "file")
            text = self._read(loc, token.get("file"))
            if text is None:
                continue
            value = _strip_newline(text)
            problem = _token_problem(value)
            if problem:
                self.problems.append((loc, problem))
                continue
            secret = value.encode("ascii")
            if secret in first_by_secret:
                other = tokens[first_by_secret[secret]]
                other_name = other.get("name") if isinstance(other, Mapping) else None
                self.problems.append(
                    (
                        loc,
                        f"this token has the same secret as token {other_name!r}; every token needs its own",
                    )
                )
                continue
            first_by_secret[secret] = index
            self._tokens[index] = secret

    def _read_tls(self, tls: Mapping[str, object]) -> None:
        """Resolve the ``[tls]`` files and load them as the server will (niks3d.tls names what is wrong)."""
        paths: dict[str, Path] = {}
        for key in ("certificate_file", "key_file", "client_ca_file"):
            name = tls.get(key)
            if isinstance(name, str) and name:
                paths[key] = resolve_secret_path(name, config_dir=self.config_dir, credentials_dir=self.credentials_dir)
        if "certificate_file" not in paths or "key_file" not in paths:
            return  # the validation problem is reported elsewhere
        key_path = paths["key_file"]
        try:
            mode = key_path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRGRP | stat.S_IROTH) and not self._under_credentials(key_path):
            logger.warning(
                "tls.key_file: %s is readable by group or others (mode %04o); make it 0600 or pass it "
                "with systemd LoadCredential=",
                key_path,
                stat.S_IMODE(mode),
            )
        files = TlsFiles(
            certificate=paths["certificate_file"],
            key=key_path,
            client_ca=paths.get("client_ca_file"),
            require_client_certificate=tls.get("client_certificates") == "required",
        )
        problems = check_tls_files(files)
        self.problems.extend((("tls", key), reason) for key, reason in problems)
        if not problems:
            self.tls_files = files

    def _read_oidc_ca(self, issuers: Sequence[object]) -> None:
        """Load each issuer's ``ca_file`` as the daemon will (relative to the configuration's directory)."""
        for index, issuer in enumerate(issuers):
            name = issuer.get("ca_file") if isinstance(issuer, Mapping) else None
            if isinstance(name, str) and name:
                _, problem = trust_context(oidc_ca_path(name, self.config_dir))
                if problem:
                    self.problems.append((("oidc", index, "ca_file"), problem))

    def read_all(self, raw: Mapping[str, object]) -> None:
        """Read every secret file named in ``raw`` (the merged, not yet validated configuration data)."""
        s3 = raw.get("s3")
        if isinstance(s3, Mapping):
            for key in ("access_key_id_file", "secret_access_key_file"):
                self._read_line(("s3", key), s3.get(key), spaces_allowed=False)
        database = raw.get("database")
        if isinstance(database, Mapping):
            self._read_line(("database", "password_file"), database.get("password_file"), spaces_allowed=True)
        signing = raw.get("signing")
        if isinstance(signing, Mapping):
            key_files = signing.get("key_files")
            if isinstance(key_files, Sequence) and not isinstance(key_files, str):
                self._read_signing_keys(key_files)
        tokens = raw.get("tokens")
        if isinstance(tokens, Sequence) and not isinstance(tokens, str):
            self._read_tokens(tokens)
        tls = raw.get("tls")
        if isinstance(tls, Mapping):
            self._read_tls(tls)
        oidc = raw.get("oidc")
        if isinstance(oidc, Sequence) and not isinstance(oidc, str):
            self._read_oidc_ca(oidc)

    def secrets(self, tokens: Sequence[tuple[str, Iterable[str], bool]], signing_keys: int) -> Secrets:
        """The secrets of the validated settings of the data given to :meth:`read_all`: ``tokens`` are the
        ``[[tokens]]`` as (name, scopes, trusted), in order, and ``signing_keys`` is how many key files it names."""
        if self.problems:
            raise RuntimeError("secrets() called although reading them found problems")
        return Secrets(
            tokens=tuple(
                Token(name=name, secret=self._tokens[i], scopes=frozenset(scopes), trusted=trusted)
                for i, (name, scopes, trusted) in enumerate(tokens)
            ),
            signing_keys=tuple(self._keys[i] for i in range(signing_keys)),
            s3_access_key_id=self._lines.get(("s3", "access_key_id_file")),
            s3_secret_access_key=self._lines.get(("s3", "secret_access_key_file")),
            database_password=self._lines.get(("database", "password_file")),
            tls=self.tls_files,
        )
