"""The plain values the storage layer hands out: object metadata, parts, uploads, presigned requests.

They are frozen dataclasses so the rest of niks3d never sees botocore's response dictionaries. ETags are kept
without the surrounding double quotes that S3 puts on the wire; :func:`normalize_etag` strips them and
:func:`quote_etag` puts them back where S3 expects them (CompleteMultipartUpload).
"""

from __future__ import annotations

__all__ = [
    "DeleteError",
    "DeleteResult",
    "ObjectInfo",
    "PartInfo",
    "PresignedRequest",
    "UploadInfo",
    "normalize_etag",
    "quote_etag",
    "size_from_content_range",
]

from dataclasses import dataclass, field
from datetime import datetime


def normalize_etag(etag: str) -> str:
    """An ETag as S3 sends it (``"abc"``, sometimes ``W/"abc"``) reduced to its bare value (``abc``)."""
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def quote_etag(etag: str) -> str:
    """The quoted form of an ETag, as CompleteMultipartUpload lists it."""
    return f'"{normalize_etag(etag)}"'


def size_from_content_range(content_range: str | None) -> int | None:
    """The whole object's size from ``Content-Range: bytes 0-9/1234`` or ``bytes */1234``; None if unknown."""
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    return None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What HEAD (or a listing, which lacks the content headers) says about one object."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None
    content_encoding: str | None = None


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One uploaded part of a multipart upload; ``size`` is None when the reporter did not know it."""

    part_number: int
    etag: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """A request a client may send without credentials; it must send ``headers`` exactly (they are signed)."""

    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteError:
    """A key that DeleteObjects refused, with S3's error code and message."""

    key: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What :meth:`Bucket.delete_many` did: keys now absent (deleted or never there) and keys refused."""

    deleted: list[str] = field(default_factory=list)
    errors: list[DeleteError] = field(default_factory=list)
