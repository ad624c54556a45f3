"""niks3d.storage: the S3 bucket that holds the binary cache, reached through aiobotocore.

:func:`open_bucket` yields a :class:`Bucket`; its methods raise only :class:`~niks3d.errors.StorageError` and
its subclasses (:class:`~niks3d.errors.ObjectNotFound`, :class:`~niks3d.errors.StorageThrottled`,
:class:`RangeNotSatisfiable`, :class:`UploadNotFound`). See docs/storage.md for what the S3 server must allow.
"""

from __future__ import annotations

__all__ = [
    "Bucket",
    "DeleteError",
    "DeleteResult",
    "ObjectInfo",
    "ObjectStream",
    "PartInfo",
    "PresignedRequest",
    "RangeNotSatisfiable",
    "UploadInfo",
    "UploadNotFound",
    "ensure_nix_cache_info",
    "open_bucket",
]

from niks3d.storage.cacheinfo import ensure_nix_cache_info
from niks3d.storage.errors import RangeNotSatisfiable, UploadNotFound
from niks3d.storage.models import (
    DeleteError,
    DeleteResult,
    ObjectInfo,
    PartInfo,
    PresignedRequest,
    UploadInfo,
)
from niks3d.storage.s3 import Bucket, open_bucket
from niks3d.storage.stream import ObjectStream
