"""Typed answers of the niks3d HTTP API (docs/api.md), validated with pydantic as they arrive.

Unknown fields are ignored, so that a newer server with more fields still works with this client; missing
required fields are a :class:`pydantic.ValidationError`, which the API client turns into a clear error.
"""

from __future__ import annotations

__all__ = [
    "CompleteAnswer",
    "Limits",
    "MissingObject",
    "ObjectSpec",
    "PartUrl",
    "Pin",
    "ReportAnswer",
    "ServerInfo",
    "SessionAnswer",
    "SessionPath",
]

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Limits(_Model):
    """Server limits from ``GET /api/v1/info``; the defaults are the server's own."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_paths_per_session: int = 100_000
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 32 * 1024 * 1024
    max_parts: int = 10_000


class ServerInfo(_Model):
    """``GET /api/v1/info``."""

    service: str
    version: str = "unknown"
    api_versions: list[int]
    capabilities: list[str] = Field(default_factory=list)
    store_dir: str = "/nix/store"
    compression: str = "zstd"
    limits: Limits = Field(default_factory=Limits)
    public_keys: list[str] = Field(default_factory=list)
    upstream_keys: list[str] = Field(default_factory=list)


class PartUrl(_Model):
    """A presigned request for one part of a multipart upload."""

    part_number: int
    url: str
    method: str = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)


class ObjectSpec(_Model):
    """What to do with one object of a path: ``put``, ``multipart`` or ``none`` (docs/api.md)."""

    kind: str
    key: str
    action: Literal["put", "multipart", "none"]
    url: str | None = None
    method: str = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    reason: str | None = None
    upload_id: str | None = None
    part_size: int | None = None
    parts: list[PartUrl] = Field(default_factory=list)


class SessionPath(_Model):
    """One path of a session answer: ``cached`` or ``upload`` with its objects."""

    path: str
    status: str
    objects: list[ObjectSpec] = Field(default_factory=list)


class SessionAnswer(_Model):
    """``POST /api/v1/sessions``."""

    session_id: str
    expires_at: str | None = None
    paths: list[SessionPath] = Field(default_factory=list)
    next: int | None = None  # where the next page of ``paths`` starts (GET .../paths?start=N); None on the last
    # "completed" when every path was cached: the server completed the session as it opened it (no complete)
    state: str | None = None


class MissingObject(_Model):
    """An object the server did not find (or found with the wrong size), and why."""

    key: str
    reason: str = ""


class ReportAnswer(_Model):
    """``POST /api/v1/sessions/{id}/objects``."""

    accepted: list[str] = Field(default_factory=list)
    missing: list[MissingObject] = Field(default_factory=list)


class CompleteAnswer(_Model):
    """``POST /api/v1/sessions/{id}/complete`` when it succeeded."""

    session_id: str
    state: str
    published: list[str] = Field(default_factory=list)
    cached: list[str] = Field(default_factory=list)
    roots: list[str] = Field(default_factory=list)
    upstream: list[str] = Field(default_factory=list)


class Pin(_Model):
    """A named GC root."""

    name: str
    path: str
    created_at: str | None = None
    updated_at: str | None = None
    created_by: str | None = None
