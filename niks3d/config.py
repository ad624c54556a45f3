"""The configuration: one TOML file, ``NIKS3_*`` environment overrides, secrets only as file paths.

This module holds the typed model (frozen pydantic models, ``extra="forbid"``) and the single path from a
file to a validated :class:`Config`: :func:`load_config`. It reads the TOML, applies the environment
overrides, validates everything and, through :mod:`niks3d.secrets`, reads every ``*_file`` secret. Every
problem found on the way is collected into one :class:`~niks3d.errors.ConfigError`. No other module reads
the environment or files for settings.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from niks3d.errors import ConfigError, ConfigProblem
from niks3d.nix.errors import InvalidSigningKey
from niks3d.nix.signing import PublicKey
from niks3d.secrets import Loc, SecretFiles, Secrets, Token, format_loc
from niks3d.tls import parse_name

__all__ = [
    "MAX_DURATION",
    "CacheSettings",
    "Config",
    "DatabaseSettings",
    "Duration",
    "GcSettings",
    "LoggingSettings",
    "OidcRule",
    "OidcSettings",
    "S3Settings",
    "Scope",
    "Secrets",
    "ServerSettings",
    "Settings",
    "SigningSettings",
    "TlsClientRule",
    "TlsSettings",
    "Token",
    "TokenSettings",
    "default_config_path",
    "load_config",
    "parse_duration",
]

DEFAULT_CONFIG_PATH = Path("/etc/niks3d/niks3d.toml")
ENV_PREFIX = "NIKS3_"
# Variables that share the prefix but are not settings: where the file is, test switches, the client's own.
NOT_SETTINGS = frozenset(
    {"NIKS3_CONFIG", "NIKS3_EVENT_LOOP", "NIKS3_REQUIRE_SERVICES", "NIKS3_TOKEN_FILE", "NIKS3_SERVER_URL"}
)

Scope = Literal["read", "push", "pin", "gc", "metrics", "admin"]

_DURATION_RE = re.compile(r"\s*([0-9]{1,12})\s*(s|m|h|d|w)?\s*", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
# The longest duration anything accepts (config and API alike): a hundred years. Longer ones are refused
# before they reach timedelta or PostgreSQL, where they would overflow (docs/configuration.md).
MAX_DURATION = timedelta(days=36500)
_TOO_LONG = "a duration cannot be longer than 100 years ('36500d')"


def parse_duration(value: object) -> timedelta:
    """Parse ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"``, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        if value > MAX_DURATION:
            raise ValueError(_TOO_LONG)
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '30d', '12h', '90m'")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if value > MAX_DURATION.total_seconds():
            raise ValueError(_TOO_LONG)
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m:
            seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            if seconds > MAX_DURATION.total_seconds():
                raise ValueError(_TOO_LONG)
            return timedelta(seconds=seconds)
    raise ValueError(f"{value!r} is not a duration: use seconds or a string such as '30d', '12h', '90m', '45s'")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 seconds")
    return value


def _presign_limit(value: timedelta) -> timedelta:
    if value > timedelta(days=7):
        raise ValueError("S3 refuses presigned URLs valid for longer than 7 days ('7d')")
    return value


def _lease_limit(value: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= value <= timedelta(hours=1):
        raise ValueError("a claim lease is between 1 second and 1 hour ('1h')")
    return value


def _max_lease_limit(value: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= value <= timedelta(days=7):
        raise ValueError("the longest a claim is held is between 1 second and 7 days ('7d')")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


def _check_listen_address(item: str) -> str:
    """``host:port``, ``[v6addr]:port`` or ``unix:/absolute/path``."""
    if item.startswith("unix:"):
        if not item[5:].startswith("/"):
            raise ValueError(f"{item!r}: a unix socket path must be absolute, as unix:/run/niks3d/http.sock")
        return item
    host, sep, port = item.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{item!r} is not host:port, [v6]:port or unix:/path")
    if host.startswith("[") or host.endswith("]"):
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{item!r}: {host!r} is not a bracketed IPv6 address such as [::1]") from None
    elif ":" in host:
        raise ValueError(f"{item!r}: an IPv6 address goes in brackets, as [::1]:5751")
    elif not host:
        raise ValueError(f"{item!r}: name the host, as 127.0.0.1:5751 (0.0.0.0 or [::] for every address)")
    return item


ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]


def _check_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
        raise ValueError(f"{value!r} needs a scheme and a host, as http://host:port or https://host")
    return value.rstrip("/")


HttpUrl = Annotated[str | None, AfterValidator(_check_http_url)]

# Paths the daemon itself serves; the read proxy's prefix may not shadow them.
_RESERVED_PREFIXES = ("/api", "/health", "/ready", "/metrics")
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")


def _check_proxy_prefix(value: str) -> str:
    """``/`` or ``/segment[/segment...]`` without a trailing slash, clear of the daemon's own paths."""
    if value == "/":
        return value
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with '/', as '/' or '/cache'")
    value = value.rstrip("/")
    segments = value[1:].split("/")
    if any(not _PREFIX_SEGMENT_RE.fullmatch(s) or s in (".", "..") for s in segments):
        raise ValueError(f"{value!r}: each segment must be letters, digits, '.', '_', '~' or '-'")
    for reserved in _RESERVED_PREFIXES:
        if value == reserved or value.startswith(reserved + "/"):
            raise ValueError(f"{value!r} would hide the daemon's own {reserved}; choose another prefix")
    return value


ProxyPrefix = Annotated[str, AfterValidator(_check_proxy_prefix)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """The HTTP listener. Under systemd socket activation the inherited sockets win over ``listen``."""

    listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:5751"],
        min_length=1,
        description="host:port, [v6addr]:port, or unix:/path; several allowed",
    )
    # The URL clients use to reach this daemon (landing page, messages); derived from `listen` if unset.
    public_url: HttpUrl = None
    # The read proxy (narinfos, NARs, logs under /): "public" serves everyone, "private" needs a token with
    # the read scope, "off" serves nothing (Nix reads the bucket directly).
    read_proxy: Literal["public", "private", "off"] = "public"
    # Where the read proxy serves the cache: "/" (the root) or a path such as "/cache".
    proxy_prefix: ProxyPrefix = "/"
    # NARs: "stream" them through the daemon from S3, or "redirect" to a short-lived presigned S3 GET.
    nar_mode: Literal["stream", "redirect"] = "stream"
    # Memory for narinfos kept by the read proxy (bytes); 0 turns the cache off (every request asks PostgreSQL).
    narinfo_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=64 * 1024**3)
    # /metrics: "public", "private" (a token with the metrics scope), or "off".
    # Unset, it follows read_proxy: "private" for a private read proxy (its figures are the cache's), else "public".
    metrics: Literal["public", "private", "off"] = "public"
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0, le=1024 * 1024 * 1024)
    drain_seconds: float = Field(default=10.0, ge=0, le=3600)
    # A connection that sends no (complete) request for this long is closed: idle, half-sent headers, keep-alive.
    idle_timeout: float = Field(default=15.0, gt=0, le=3600)
    # The longest a request body (JSON) may take to arrive; a slower one is a 408.
    body_timeout: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _metrics_follow_read_proxy(cls, data: object) -> object:
        if isinstance(data, dict) and "metrics" not in data and data.get("read_proxy") == "private":
            return {**data, "metrics": "private"}
        return data


class DatabaseSettings(_Section):
    """PostgreSQL. ``url`` must not carry a password: use ``password_file``."""

    url: str = "postgresql:///niks3?host=/run/postgresql"
    password_file: Path | None = None
    pool_min_size: int = Field(default=1, ge=0, le=1000)
    pool_max_size: int = Field(default=10, ge=1, le=1000)
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    # The longest a request waits for a free connection from the pool.
    acquire_timeout: float = Field(default=5.0, gt=0, le=300)
    # The longest one statement may run (PostgreSQL's statement_timeout, and the client's own deadline a little
    # later, for a server that stopped answering at all).
    statement_timeout: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        authority = value.split("://", 1)[1].split("/", 1)[0]
        query = value.partition("?")[2]
        if ("@" in authority and ":" in authority.rsplit("@", 1)[0]) or re.search(r"(^|&)password=", query):
            raise ValueError("must not contain a password; put it in database.password_file")
        return value

    @model_validator(mode="after")
    def _pool_sizes(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(f"pool_min_size ({self.pool_min_size}) exceeds pool_max_size ({self.pool_max_size})")
        return self


class S3Settings(_Section):
    """The bucket. Static keys come from files; without them the AWS default credential chain is used."""

    bucket: str
    endpoint_url: HttpUrl = None  # with scheme; None means AWS
    # The endpoint that clients (niks3 push, Nix) use for presigned URLs, if it differs from endpoint_url.
    public_endpoint_url: HttpUrl = None
    region: str = Field(default="us-east-1", min_length=1)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    access_key_id_file: Path | None = None
    secret_access_key_file: Path | None = None
    # S3 (SigV4) refuses presigned URLs valid for more than 7 days.
    presign_expiry: Annotated[PositiveDuration, AfterValidator(_presign_limit)] = timedelta(hours=1)
    # NARs at least this large (uncompressed) are uploaded as multipart.
    multipart_threshold: int = Field(default=64 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**4)
    multipart_part_size: int = Field(default=32 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
    # What niks3d checks of an uploaded NAR before it is present for everyone. "size": existence and size for
    # tokens marked trusted, everything below for the others; "full": for every token, download, hash and unpack
    # the NAR (NarHash, NarSize, Nix's NAR rules), once, when it is first published (docs/security.md, rule 1).
    verify: Literal["size", "full"] = "size"
    # At most this many NARs are verified at once by one daemon (each streams the object through zstd and SHA-256).
    verify_concurrency: int = Field(default=4, ge=1, le=64)
    max_attempts: int = Field(default=8, ge=1, le=100)
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    # The longest wait for the next bytes of an answer.
    read_timeout: float = Field(default=30.0, gt=0, le=3600)
    # The longest one S3 call may take, every retry included (a NAR body being relayed is not one call).
    request_timeout: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", value):
            raise ValueError(f"{value!r} is not a bucket name: use letters, digits, '.', '_' and '-' only")
        return value

    @model_validator(mode="after")
    def _keys_together(self) -> S3Settings:
        if (self.access_key_id_file is None) != (self.secret_access_key_file is None):
            raise ValueError("set both access_key_id_file and secret_access_key_file, or neither (AWS default chain)")
        return self


class SigningSettings(_Section):
    """Secret keys in `nix key generate-secret` format; every key signs every narinfo (rotation)."""

    key_files: list[Path] = Field(min_length=1)
    # Narinfos PUT by stock Nix (`nix copy --to`, docs/api.md): keep the client's own Sig lines next to the
    # server's signatures (true), or drop them (false: only the server's keys vouch for what this cache serves).
    keep_client_signatures: bool = False


class TokenSettings(_Section):
    """An API token: a name for the logs, the file holding the secret, and its scopes."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    file: Path
    scopes: list[Scope] = Field(min_length=1)
    # A trusted writer's NARs are shared after the size check alone when s3.verify = "size"; every other
    # writer's are verified in full before anyone else may rely on them (docs/security.md, rule 1).
    trusted: bool = False


_CERT_FIELDS = ("subject", "dns", "uri", "email")


class TlsClientRule(_Section):
    """Which client certificates get which scopes: one field of the certificate matched against a glob pattern.

    ``subject`` matches the subject as an RFC 4514 string (``CN=ci-1,O=Example``, most specific part first, as
    ``openssl x509 -noout -subject -nameopt RFC2253`` prints it); ``dns``, ``uri`` and ``email`` match each
    subjectAltName entry of that kind. Patterns are shell globs (``*``, ``?``, ``[...]``), matched case-sensitively
    against the whole value (docs/auth.md, "Client certificates").
    """

    subject: str | None = Field(default=None, min_length=1)
    dns: str | None = Field(default=None, min_length=1)
    uri: str | None = Field(default=None, min_length=1)
    email: str | None = Field(default=None, min_length=1)
    scopes: list[Scope] = Field(min_length=1)
    # As for a token: its NARs are shared after the size check alone when s3.verify = "size" (docs/security.md).
    trusted: bool = False

    @model_validator(mode="after")
    def _one_field(self) -> TlsClientRule:
        given = [name for name in _CERT_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a rule matches exactly one of {', '.join(_CERT_FIELDS)}; this one sets "
                + (", ".join(given) if given else "none")
            )
        if self.subject is not None:
            parse_name(self.subject)  # ValueError says what is wrong with the pattern
        return self

    @property
    def field(self) -> str:
        """The certificate field this rule matches."""
        return next(name for name in _CERT_FIELDS if getattr(self, name) is not None)

    @property
    def pattern(self) -> str:
        value = getattr(self, self.field)
        assert isinstance(value, str)
        return value


class TlsSettings(_Section):
    """HTTPS on the TCP listeners (Unix sockets stay plain HTTP), and optionally client certificates.

    The files are read at start and again on SIGHUP (docs/auth.md, "Client certificates"); relative names are
    resolved like secrets, against ``$CREDENTIALS_DIRECTORY`` or the configuration file's directory.
    """

    certificate_file: Path  # PEM: the server certificate, then any intermediates
    key_file: Path  # PEM, unencrypted
    # PEM CA certificates that sign client certificates; unset, niks3d asks for none.
    client_ca_file: Path | None = None
    # "optional": a client may connect without a certificate (and use a token); "required": the handshake fails
    # without one signed by client_ca_file.
    client_certificates: Literal["optional", "required"] = "optional"
    clients: list[TlsClientRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _clients_need_a_ca(self) -> TlsSettings:
        if self.client_ca_file is None and (self.clients or self.client_certificates == "required"):
            what = 'client_certificates = "required"' if not self.clients else "[[tls.clients]] rules"
            raise ValueError(f"{what} need client_ca_file, the CA that signs the client certificates")
        return self


_CLAIM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class OidcRule(_Section):
    """Scopes for the tokens whose claims match every pattern (docs/auth.md)."""

    # Claim name -> glob pattern (fnmatch: `*`, `?`, `[...]`); every one must match the token's claim.
    claims: dict[str, str] = Field(min_length=1)
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("claims")
    @classmethod
    def _check_claims(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not _CLAIM_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a claim name (letters, digits, '_', '.', '-')")
            if not pattern:
                raise ValueError(f"the pattern for claim {name!r} is empty; use '*' for any value")
        return value


def _check_issuer(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError(
            f"{value!r}: an OIDC issuer is an https:// URL, as https://token.actions.githubusercontent.com"
        )
    return value.rstrip("/")


class OidcSettings(_Section):
    """An OIDC issuer whose ID tokens are accepted as bearer tokens (GitHub Actions, GitLab CI: docs/auth.md)."""

    # Shown in logs and identity names; letters, digits, '.', '_', '-'.
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # The token's `iss`, exactly; discovery is read from <issuer>/.well-known/openid-configuration.
    issuer: Annotated[str, AfterValidator(_check_issuer)]
    # The token's `aud` must hold this (what the CI job asked its token for, e.g. this cache's URL).
    audience: str = Field(min_length=1)
    # The claim that names the identity in logs and as the owner of sessions (`sub`, or e.g. `repository`).
    name_claim: str = Field(default="sub", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Scopes for tokens matching a rule; a token matching none is refused. Scopes of every matching rule add up.
    rules: list[OidcRule] = Field(min_length=1)
    # CA certificates (PEM) to trust for the issuer's HTTPS instead of the system's; for a private issuer.
    ca_file: Path | None = None
    # Clock skew allowed for exp, nbf and iat.
    leeway: Duration = timedelta(seconds=30)
    # How long fetched keys are used before they are fetched again (still used while the issuer is down).
    jwks_max_age: PositiveDuration = timedelta(hours=1)
    # A token with an unknown `kid` triggers a fetch of the keys at most this often.
    jwks_min_refresh: Duration = timedelta(minutes=1)


# cache.nixos.org's key, Nix's default `trusted-public-keys`.
NIXOS_CACHE_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


def _check_upstream_keys(value: list[str]) -> list[str]:
    names = []
    for text in value:
        try:
            names.append(PublicKey.parse(text).name)
        except InvalidSigningKey as exc:
            raise ValueError(str(exc)) from None
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"key names must be unique; repeated: {', '.join(dupes)}")
    return value


class CacheSettings(_Section):
    """What `nix-cache-info` announces, how NARs are stored, and which upstream caches pushes may lean on."""

    priority: int = Field(default=40, ge=0, le=1_000_000)
    want_mass_query: bool = True
    store_dir: Literal["/nix/store"] = "/nix/store"
    # Public keys (`name:base64`) of the caches used together with this one: a reference signed by one of them
    # is recorded as upstream instead of being uploaded (docs/api.md, upstream references). [] turns it off.
    upstream_keys: Annotated[list[str], AfterValidator(_check_upstream_keys)] = Field(
        default_factory=lambda: [NIXOS_CACHE_KEY]
    )

    def upstream_public_keys(self) -> tuple[PublicKey, ...]:
        """The parsed ``upstream_keys``."""
        return tuple(PublicKey.parse(text) for text in self.upstream_keys)


class GcSettings(_Section):
    """Defaults for garbage collection runs."""

    # Pushed roots are kept this long after their last push.
    older_than: Duration = timedelta(days=30)
    # Objects younger than this are never swept unless a run is forced (slow uploaders, crash leftovers).
    grace_period: Duration = timedelta(hours=1)
    # Upload sessions are open this long; GC aborts older ones.
    session_expiry: PositiveDuration = timedelta(hours=6)
    # How long other sessions of the same identity wait for an uploader that shows no upload progress before they
    # take the upload over (docs/api.md, "Waiting for another session's upload"); calls without progress do not
    # renew it. Other identities never wait: they upload on their own (docs/security.md, rule 1).
    claim_lease: Annotated[PositiveDuration, AfterValidator(_lease_limit)] = timedelta(seconds=30)
    # However much progress it shows, an uploader keeps a key at most this long after it became its uploader;
    # then the next session that needs the key takes the upload over (docs/security.md, rule 1).
    claim_max_lease: Annotated[PositiveDuration, AfterValidator(_max_lease_limit)] = timedelta(hours=1)
    batch_size: int = Field(default=1000, ge=1, le=1000)

    @model_validator(mode="after")
    def _cap_above_lease(self) -> GcSettings:
        if self.claim_max_lease < self.claim_lease:
            raise ValueError(
                f"claim_max_lease ({self.claim_max_lease}) must be at least claim_lease ({self.claim_lease})"
            )
        return self


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: the journal when stderr is the journal (JOURNAL_STREAM), readable text otherwise.
    format: Literal["auto", "journal", "text", "json"] = "auto"


class Settings(_Section):
    """The whole configuration, as validated from the TOML file plus environment overrides."""

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    s3: S3Settings
    signing: SigningSettings
    tokens: list[TokenSettings] = Field(default_factory=list)
    oidc: list[OidcSettings] = Field(default_factory=list)
    cache: CacheSettings = CacheSettings()
    gc: GcSettings = GcSettings()
    logging: LoggingSettings = LoggingSettings()
    tls: TlsSettings | None = None

    @field_validator("tokens")
    @classmethod
    def _unique_token_names(cls, value: list[TokenSettings]) -> list[TokenSettings]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"token names must be unique; repeated: {', '.join(dupes)}")
        return value

    @field_validator("oidc")
    @classmethod
    def _unique_issuers(cls, value: list[OidcSettings]) -> list[OidcSettings]:
        for what, items in (("names", [o.name for o in value]), ("issuers", [o.issuer for o in value])):
            dupes = sorted({n for n in items if items.count(n) > 1})
            if dupes:
                raise ValueError(f"OIDC {what} must be unique; repeated: {', '.join(dupes)}")
        return value


@dataclass(frozen=True)
class Config:
    """A validated configuration: the settings, the secrets they name, the file they came from, and which
    ``NIKS3_*`` variables overrode it."""

    settings: Settings
    secrets: Secrets
    source: Path
    overrides: tuple[str, ...] = ()


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$NIKS3_CONFIG``, else ``/etc/niks3d/niks3d.toml``."""
    value = environ.get("NIKS3_CONFIG")
    return Path(value) if value else DEFAULT_CONFIG_PATH


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``.

    Nested keys use ``__`` (``NIKS3_S3__BUCKET``); lists and tables are JSON; ``null`` unsets an optional key.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(
            cast("type[BaseSettings]", Settings),
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            env_parse_none_str="null",
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


@dataclass(frozen=True)
class _Override:
    name: str  # the variable, as set
    loc: Loc  # the setting it names
    values: dict[str, object]  # what it contributes, nested as in the TOML


def _env_overrides(environ: Mapping[str, str], problems: list[ConfigProblem]) -> list[_Override]:
    """Each ``NIKS3_*`` variable on its own, so that every problem names the variable that caused it."""
    overrides = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
            continue
        loc: Loc = tuple(upper[len(ENV_PREFIX) :].lower().split("__"))
        where = f"environment variable {name}"
        try:
            values = _EnvSource({name: value})()
        except SettingsError as exc:
            detail = f" ({exc.__cause__})" if exc.__cause__ else ""
            reason = f'cannot parse the value{detail}; lists and tables are written as JSON, e.g. \'["a", "b"]\''
            problems.append(ConfigProblem(where, format_loc(loc), reason))
            continue
        if values:
            overrides.append(_Override(name, loc, values))
        elif "__" in name:
            problems.append(ConfigProblem(where, format_loc(loc), "not a configuration key"))
    # Whole sections first, single keys after them, so that the more specific variable wins.
    return sorted(overrides, key=lambda o: len(o.loc))


def _merge(base: Mapping[str, object], update: Mapping[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(cast("Mapping[str, object]", old), cast("Mapping[str, object]", value))
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path, problems: list[ConfigProblem]) -> dict[str, object] | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        problems.append(ConfigProblem(str(path), "", f"cannot read the configuration file: {exc.strerror}"))
        return None
    try:
        text = data.decode("utf-8")
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        problems.append(ConfigProblem(str(path), "", f"not valid TOML: not UTF-8 text (byte {exc.start})"))
    except tomllib.TOMLDecodeError as exc:
        # tomllib names the line and column, except for errors at the end of the file.
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        message = str(exc).replace("(at end of document)", f"(at the end of the file, line {last_line})")
        problems.append(ConfigProblem(str(path), "", f"not valid TOML: {message}"))
    return None


def _reason(error_type: str, message: str) -> str:
    if error_type == "missing":
        return "required, but not set"
    if error_type == "extra_forbidden":
        return "unknown key"
    if error_type == "path_type":
        return "must be a file name (a string)"
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None, open_secrets: bool = True) -> Config:
    """Read, override, validate and resolve the configuration at ``path``; raise ConfigError listing every
    problem.

    ``environ`` (default ``os.environ``) supplies the ``NIKS3_*`` overrides and ``$CREDENTIALS_DIRECTORY``.
    With ``open_secrets=False`` only the structure is checked and the returned :class:`Secrets` are empty.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    source = Path(path)
    problems: list[ConfigProblem] = []
    raw = _read_toml(source, problems)
    if raw is None:
        raise ConfigError(problems)
    overrides = _env_overrides(env, problems)
    merged: dict[str, object] = raw
    for override in overrides:
        merged = _merge(merged, override.values)

    def where(loc: Loc, *, missing: bool = False) -> str:
        """The variable whose value sits at ``loc``, or the file."""
        if not missing:
            for override in reversed(overrides):
                if tuple(str(part) for part in loc[: len(override.loc)]) == override.loc:
                    return f"environment variable {override.name}"
        return str(source)

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(error["loc"])
            missing = error["type"] == "missing"
            problems.append(
                ConfigProblem(where(loc, missing=missing), format_loc(loc), _reason(error["type"], error["msg"]))
            )

    secrets = Secrets.empty()
    if open_secrets:
        credentials = env.get("CREDENTIALS_DIRECTORY")
        files = SecretFiles(
            config_dir=source.absolute().parent, credentials_dir=Path(credentials) if credentials else None
        )
        files.read_all(merged)
        problems.extend(ConfigProblem(where(loc), format_loc(loc), reason) for loc, reason in files.problems)
        if settings is not None and not problems:
            secrets = files.secrets(
                [(t.name, t.scopes, t.trusted) for t in settings.tokens], signing_keys=len(settings.signing.key_files)
            )
    if problems or settings is None:
        raise ConfigError(problems)
    return Config(settings, secrets, source.absolute(), tuple(o.name for o in overrides))
