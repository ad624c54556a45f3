"""Server-side copies: how niks3d moves an upload from its session's staging key to the key it is published under.

Clients never get a URL for a published key (docs/security.md, rule 2): they upload to
``staging/<session>/<key>``, and niks3d copies the object into place with CopyObject (objects up to 5 GiB, one
request) or a multipart upload of UploadPartCopy parts (larger ones). The copy's Content-Type and
Content-Encoding are set by niks3d (``MetadataDirective=REPLACE``), never taken from what the client sent.
Each copy request has a deadline that grows with the bytes it copies (``deadline.copy_deadline``).
"""

from __future__ import annotations

__all__ = ["MAX_SINGLE_COPY", "CopyOps"]

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from niks3d.storage.deadline import copy_deadline
from niks3d.storage.errors import storage_errors
from niks3d.storage.multipart import MAX_PART_NUMBER, MultipartOps

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

# S3 copies at most 5 GiB in one CopyObject; larger objects are copied part by part.
MAX_SINGLE_COPY = 5 * 1024**3


class CopyOps(MultipartOps):
    """The copy operations of a :class:`~niks3d.storage.Bucket`."""

    async def copy(
        self,
        source: str,
        target: str,
        *,
        size: int,
        content_type: str,
        content_encoding: str | None = None,
        part_size: int = 512 * 1024 * 1024,
    ) -> None:
        """Copy ``source`` (of ``size`` bytes) to ``target`` inside the bucket, with the given content headers."""
        if size <= MAX_SINGLE_COPY:
            params: dict[str, Any] = {
                "Bucket": self.name,
                "Key": target,
                "CopySource": {"Bucket": self.name, "Key": source},
                "MetadataDirective": "REPLACE",
                "ContentType": content_type,
            }
            if content_encoding is not None:
                params["ContentEncoding"] = content_encoding
            with storage_errors("CopyObject", self.name, target):
                # one deadline for the presigned attempt and botocore's
                async with asyncio.timeout(copy_deadline(self.settings.request_timeout, size)):
                    if self._http is not None and await self._quick_copy(self._http, target, params):
                        return
                    await self._client.copy_object(**params)
            return
        part_size = max(part_size, -(-size // MAX_PART_NUMBER))  # S3 allows at most 10000 parts
        upload_id = await self.create_multipart(target, content_type=content_type)
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, start in enumerate(range(0, size, part_size), 1):
                end = min(size, start + part_size) - 1
                deadline = copy_deadline(self.settings.request_timeout, end + 1 - start)
                with storage_errors("UploadPartCopy", self.name, target, upload_id):
                    async with asyncio.timeout(deadline):
                        resp = await self._client.upload_part_copy(
                            Bucket=self.name,
                            Key=target,
                            UploadId=upload_id,
                            PartNumber=number,
                            CopySource={"Bucket": self.name, "Key": source},
                            CopySourceRange=f"bytes={start}-{end}",
                        )
                parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]})
            with storage_errors("CompleteMultipartUpload", self.name, target, upload_id):
                await self._client.complete_multipart_upload(
                    Bucket=self.name, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            await self.abort_multipart(target, upload_id)
            raise
        log.debug("copied %s to %s in %d parts", source, target, len(parts))
