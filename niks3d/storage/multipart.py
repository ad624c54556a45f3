"""Multipart uploads of large NARs: start, presign parts for the client, list, complete, abort, enumerate.

The client uploads the parts itself through presigned URLs; niks3d only starts the upload, hands out part
URLs, and completes it. Completing is retry-safe: when S3 no longer knows the upload id
(:class:`UploadNotFound` from CompleteMultipartUpload or ListParts) but the object now exists under the key,
an earlier complete (whose answer was lost) already succeeded, and this one succeeds too. Keys are
content-addressed, so an object found under the key has the content the upload would have produced.
"""

from __future__ import annotations

__all__ = ["MAX_PART_NUMBER", "MultipartOps"]

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, cast

from niks3d.errors import StorageError
from niks3d.storage.body import BufferBody
from niks3d.storage.core import BucketCore
from niks3d.storage.errors import UploadNotFound, storage_errors
from niks3d.storage.models import PartInfo, PresignedRequest, UploadInfo, normalize_etag, quote_etag

log = logging.getLogger(__name__)

# S3 numbers parts from 1 to 10000.
MAX_PART_NUMBER = 10_000


class MultipartOps(BucketCore):
    """The multipart-upload operations of a :class:`~niks3d.storage.Bucket`."""

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        """Start a multipart upload of ``key``; returns its upload id."""
        with storage_errors("CreateMultipartUpload", self.name, key):
            resp = await self._client.create_multipart_upload(Bucket=self.name, Key=key, ContentType=content_type)
        upload_id = resp["UploadId"]
        log.debug("started multipart upload %s of %s", upload_id, key)
        return upload_id

    async def presign_part(
        self, key: str, upload_id: str, part_number: int, *, expires: timedelta | None = None
    ) -> PresignedRequest:
        """A presigned PUT for part ``part_number`` (1..10000) of the upload; no headers need to be sent."""
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise ValueError(f"part number {part_number} of {key!r} is outside 1..{MAX_PART_NUMBER}")
        url = await self._presign(
            "upload_part",
            {"Bucket": self.name, "Key": key, "UploadId": upload_id, "PartNumber": part_number},
            expires,
            key,
        )
        return PresignedRequest(url=url, method="PUT", headers={})

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: bytes | bytearray | memoryview
    ) -> PartInfo:
        """Upload part ``part_number`` of the upload from niks3d itself (NARs that stock Nix PUTs to niks3d).

        The body is sent without a copy (:class:`~niks3d.storage.body.BufferBody`; do not change it until this
        returns), with Content-MD5, which every S3 server we support checks (SeaweedFS does not check the SHA-256
        of the SigV4 signature): S3 refuses a corrupted part (docs/storage.md, "Checksums")."""
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise ValueError(f"part number {part_number} of {key!r} is outside 1..{MAX_PART_NUMBER}")
        data = BufferBody(body)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        with storage_errors("UploadPart", self.name, key, upload_id):
            resp = await self._client.upload_part(
                Bucket=self.name,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=cast("Any", data),
                ContentMD5=md5,
            )
        return PartInfo(part_number=part_number, etag=normalize_etag(resp["ETag"]), size=len(data))

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """Every part uploaded so far (all pages), in part-number order, one entry per part number.

        A part uploaded twice (a resumed push) is the later upload. SeaweedFS lists both uploads of such a
        part, newest first; the entry with the latest LastModified wins, and on a tie the one listed first.
        """
        newest: dict[int, tuple[Any, PartInfo]] = {}
        with storage_errors("ListParts", self.name, key, upload_id):
            paginator = self._client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.name, Key=key, UploadId=upload_id):
                for p in page.get("Parts", []):
                    part = PartInfo(part_number=p["PartNumber"], etag=normalize_etag(p["ETag"]), size=p.get("Size"))
                    stamp = p.get("LastModified")
                    seen = newest.get(part.part_number)
                    if seen is None or (stamp is not None and seen[0] is not None and stamp > seen[0]):
                        newest[part.part_number] = (stamp, part)
        return [newest[n][1] for n in sorted(newest)]

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo] | None = None) -> None:
        """Assemble the object from ``parts`` (None: every part S3 has, from :meth:`list_parts`).

        Idempotent: if S3 no longer knows ``upload_id``, or lists no parts for it, but ``key`` exists, the upload
        was completed before (or is being completed by another request); the caller checks the object's size.
        """
        try:
            if parts is None:
                parts = await self.list_parts(key, upload_id)
            if not parts:
                # S3 servers differ while another request completes the same upload: some still list it with no
                # parts left. The object is then there (the caller checks its size), as when the upload is gone.
                if await self.head(key) is not None:
                    log.info(
                        "multipart upload %s of %s lists no parts but the object exists: completed", upload_id, key
                    )
                    return
                raise StorageError(f"multipart upload {upload_id!r} of object {key!r} has no parts to complete")
            ordered = sorted(parts, key=lambda p: p.part_number)
            numbers = [p.part_number for p in ordered]
            if len(set(numbers)) != len(numbers):
                raise StorageError(f"multipart upload {upload_id!r} of object {key!r} lists a part twice")
            with storage_errors("CompleteMultipartUpload", self.name, key, upload_id):
                await self._client.complete_multipart_upload(
                    Bucket=self.name,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": p.part_number, "ETag": quote_etag(p.etag)} for p in ordered]
                    },
                )
        except UploadNotFound:
            if await self.head(key) is None:
                raise
            log.info("multipart upload %s of %s is gone but the object exists: completed before", upload_id, key)
            return
        log.debug("completed multipart upload %s of %s (%d parts)", upload_id, key, len(ordered))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort the upload and free its parts; an upload that is already gone is fine."""
        try:
            with storage_errors("AbortMultipartUpload", self.name, key, upload_id):
                await self._client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except UploadNotFound:
            log.debug("multipart upload %s of %s was already gone", upload_id, key)

    async def iter_multipart_uploads(self, prefix: str = "") -> AsyncIterator[UploadInfo]:
        """Every unfinished multipart upload under ``prefix`` (all pages), for GC."""
        with storage_errors("ListMultipartUploads", self.name):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    yield UploadInfo(key=upload["Key"], upload_id=upload["UploadId"], initiated=upload["Initiated"])
