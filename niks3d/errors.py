"""The one error hierarchy of niks3d.

Every error a niks3d module raises on purpose derives from :class:`Niks3Error`, and its message names the thing
that is wrong (a file, a TOML key, a narinfo line, a store path, a bucket key)::

    Niks3Error
    ├── ConfigError            a config file, key or secret is wrong (carries every problem found)
    ├── DatabaseError          PostgreSQL refused or is unreachable; migrations failed
    ├── StorageError           the S3 server refused or is unreachable
    │   ├── ObjectNotFound     a key is absent from the bucket
    │   ├── StorageThrottled   S3 said 429/SlowDown and back-off did not absorb it (retry_after seconds)
    │   └── StorageUnavailable S3 could not be reached or did not answer in time (an outage, not a refusal)
    ├── RequestError           a request the domain refuses; ``code`` is stable and machine-readable, the message
    │   │                      names the problem, ``details`` go into a JSON answer as extra fields
    │   ├── InvalidRequest     the request is malformed or inconsistent (400)
    │   ├── NotFound           what the request names does not exist (404)
    │   ├── StateConflict      the request collides with the state of the cache (409)
    │   ├── MissingPrerequisite   what it relies on is not there (yet): objects, references (422)
    │   ├── InvalidUpload      an uploaded object is not what its session declared (422)
    │   ├── Unsupported        a format or encoding this cache does not take (415)
    │   └── AccessDenied       the request's credentials do not allow it
    │       ├── Unauthenticated   none, unusable or unknown credentials (401)
    │       └── Forbidden         a known identity without the scope (403)
    ├── ApiError               an HTTP answer with its status: a refusal only the HTTP layer knows (415 in
    │                          niks3d.server.body), and the API's error answers as the niks3 client receives them
    ├── ClientError            the push client cannot go on (server unreachable, token refused, version skew)
    │   └── AuthError          the server refused the token (401) or the token lacks a scope (403)
    └── ServiceError           a child process (postgres, weed, nix) failed to start or exited early

The pure protocol code in :mod:`niks3d.nix` raises :class:`niks3d.nix.errors.NixFormatError` (a ``ValueError``)
instead, because that package imports nothing else from niks3d; the server maps it to a 400.

The domain (:mod:`niks3d.uploads`, :mod:`niks3d.gc`, :mod:`niks3d.db`, :mod:`niks3d.storage`) never names an HTTP
status: :mod:`niks3d.server.errors` is the one table from these classes to answers.

Only entry points (``main()`` functions) turn these into exit codes; library code raises.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ApiError",
    "AuthError",
    "ClientError",
    "ConfigError",
    "ConfigProblem",
    "DatabaseError",
    "Forbidden",
    "InvalidRequest",
    "InvalidUpload",
    "MissingPrerequisite",
    "Niks3Error",
    "NotFound",
    "ObjectNotFound",
    "RequestError",
    "ServiceError",
    "StateConflict",
    "StorageError",
    "StorageThrottled",
    "StorageUnavailable",
    "Unauthenticated",
    "Unsupported",
]

from dataclasses import dataclass
from typing import Any


class Niks3Error(Exception):
    """Base of every error niks3d raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration: where (file, dotted key) and why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


class ConfigError(Niks3Error):
    """The configuration is invalid; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems) or "invalid configuration")


class DatabaseError(Niks3Error):
    """PostgreSQL refused a statement, is unreachable, or the schema is not what this version expects."""


class StorageError(Niks3Error):
    """The S3 server refused a request or is unreachable."""


class ObjectNotFound(StorageError):
    """A bucket key does not exist."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"object {key!r} does not exist in the bucket")


class StorageThrottled(StorageError):
    """S3 kept answering 429/SlowDown after our own back-off; the caller should retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StorageUnavailable(StorageError):
    """S3 could not be reached, or did not answer within its timeouts: an outage of S3, nothing to fix in niks3d."""


class RequestError(Niks3Error):
    """A request the domain refuses: a stable ``code``, a message naming the problem, optional ``details``."""

    default_code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        self.code = code or self.default_code
        self.message = message
        self.details = details
        super().__init__(message)


class InvalidRequest(RequestError):
    """The request is malformed or inconsistent."""


class NotFound(RequestError):
    """What the request names does not exist; ``code`` says what (``session_not_found``, ``path_not_found``)."""

    default_code = "not_found"


class StateConflict(RequestError):
    """The request collides with the cache's state (a closed session, a path still in use)."""

    default_code = "conflict"


class MissingPrerequisite(RequestError):
    """What the request relies on is not there (yet): objects not uploaded, references not in the cache."""


class InvalidUpload(RequestError):
    """What a writer uploaded is not what its session declared (a NAR that fails verification): 422."""

    default_code = "objects_invalid"


class Unsupported(RequestError):
    """The request comes in a format or encoding this cache does not take (a compression, a media type)."""

    default_code = "unsupported_media_type"


class AccessDenied(RequestError):
    """The request's credentials do not allow it (the server's side; the client's is :class:`AuthError`)."""


class Unauthenticated(AccessDenied):
    """No credentials, unusable ones, or ones this server does not know."""

    default_code = "unauthorized"


class Forbidden(AccessDenied):
    """A known identity that lacks the scope the request needs."""

    default_code = "forbidden"


class ApiError(Niks3Error):
    """A request the HTTP API refuses, with its HTTP status, a stable code and optional details for the body."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        super().__init__(message)


class ClientError(Niks3Error):
    """The niks3 client cannot go on: the message says what to fix."""


class AuthError(ClientError):
    """The server refused the client's token (401) or the token lacks a scope (403)."""


class ServiceError(Niks3Error):
    """A child process failed to start or exited; the message carries the tail of its stderr."""
