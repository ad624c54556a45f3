"""The bucket as niks3d uses it: one aiobotocore client; reads, writes, listing, deletes, presigned URLs.

:func:`open_bucket` builds the client from :class:`~niks3d.config.S3Settings`: SigV4, path-style addressing
for a custom endpoint (virtual-hosted for AWS) unless configured otherwise, a connection pool sized for a busy
daemon, and botocore's own "standard" retry mode, which retries throttling (SlowDown, 503) and transient
errors with jittered exponential back-off up to ``s3.max_attempts`` attempts. What is still throttled after
that surfaces as :class:`~niks3d.errors.StorageThrottled` with a ``retry_after``, so the HTTP layer can answer
429 with Retry-After.

Checksums are only computed where S3 requires them (DeleteObjects): the default "when supported" mode would
send PutObject as aws-chunked with trailing checksums and put checksum headers into CreateMultipartUpload,
which many S3-compatible servers and presigned part uploads from clients do not handle. PutObject carries
``x-amz-checksum-sha256`` instead and UploadPart Content-MD5, which every S3 server we support checks
(docs/storage.md, "Checksums").
"""

from __future__ import annotations

__all__ = ["Bucket", "open_bucket", "range_header"]

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from niks3d.config import S3Settings
from niks3d.errors import ObjectNotFound, StorageError
from niks3d.storage.body import BufferBody
from niks3d.storage.copy import CopyOps
from niks3d.storage.core import QUICK_PUT_LIMIT
from niks3d.storage.deadline import DeadlineClient
from niks3d.storage.errors import error_status, storage_errors
from niks3d.storage.http import presigned_session
from niks3d.storage.models import (
    DeleteError,
    DeleteResult,
    ObjectInfo,
    PresignedRequest,
    normalize_etag,
    size_from_content_range,
)
from niks3d.storage.stream import ObjectStream

if TYPE_CHECKING:  # the stubs are a development dependency only
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

# DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000


def range_header(byte_range: tuple[int, int | None]) -> str:
    """``(start, end)``: inclusive end; ``(start, None)``: to the end; ``(-n, None)``: the last n bytes."""
    start, end = byte_range
    if start < 0 and end is None:
        return f"bytes={start}"
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"byte range {byte_range!r} is not (start, end) with 0 <= start <= end")
    return f"bytes={start}-" if end is None else f"bytes={start}-{end}"


class Bucket(CopyOps):
    """The bucket niks3d publishes to. Build it with :func:`open_bucket`; every method raises only
    :class:`~niks3d.errors.StorageError` and its subclasses, with the key in the message."""

    async def check(self) -> None:
        """HeadBucket; a StorageError says whether the bucket is missing, refused or unreachable."""
        where = f"bucket {self.name!r} at {self.endpoint_url}"
        with storage_errors("HeadBucket", self.name):
            try:
                await self._client.head_bucket(Bucket=self.name)
            except ClientError as exc:
                status = error_status(exc)
                if status == 404:
                    raise StorageError(f"{where} does not exist (create it, or fix s3.bucket)") from exc
                if status in (400, 403):
                    # HEAD answers have no body; a listing's XML error says why (wrong key, wrong secret...).
                    await self._client.list_objects_v2(Bucket=self.name, MaxKeys=1)
                raise

    async def put(
        self,
        key: str,
        body: bytes | bytearray | memoryview,
        *,
        content_type: str,
        content_encoding: str | None = None,
        cache_control: str | None = None,
        sha256: bytes | None = None,
    ) -> None:
        """Write ``body`` under ``key`` in one PutObject.

        The body is sent without a copy (:class:`~niks3d.storage.body.BufferBody`; do not change it until this
        returns), with its SHA-256 as ``x-amz-checksum-sha256`` so that S3 rejects a corrupted body
        (docs/storage.md); a caller that knows the digest passes it as ``sha256`` and it is not computed again."""
        digest = hashlib.sha256(body).digest() if sha256 is None else sha256
        params: dict[str, Any] = {"ContentType": content_type, "ChecksumSHA256": base64.b64encode(digest).decode()}
        if content_encoding is not None:
            params["ContentEncoding"] = content_encoding
        if cache_control is not None:
            params["CacheControl"] = cache_control
        async with self._call("PutObject", key):
            if (
                self._http is not None
                and len(body) <= QUICK_PUT_LIMIT
                and await self._quick_put(self._http, key, body, params)
            ):
                return
            params.update(Bucket=self.name, Key=key, Body=BufferBody(body))
            await self._client.put_object(**params)

    async def get(self, key: str) -> bytes:
        """The whole object (for small ones: narinfos, nix-cache-info); ObjectNotFound when absent."""
        async with await self.open_stream(key) as stream:
            return await stream.read()

    async def get_many(
        self, keys: Sequence[str], *, concurrency: int = 32, small: int = 1 << 20
    ) -> dict[str, bytes | None]:
        """Each of ``keys`` (small objects), at most ``concurrency`` at once, in the order given; None where absent.
        Objects of up to ``small`` bytes come through presigned GETs on the plain HTTP session (``core.py``),
        the rest, and any answer but 200 or 404, through botocore."""
        slots = asyncio.Semaphore(concurrency)

        async def one(key: str) -> tuple[str, bytes | None]:
            async with slots, self._call("GetObject", key):
                if self._http is not None:
                    answered, body = await self._quick_get(self._http, key, small)
                    if answered:
                        return key, body
                try:
                    return key, await self.get(key)
                except ObjectNotFound:
                    return key, None

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def open_stream(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> ObjectStream:
        """GET ``key`` (or a range of it, see :func:`range_header`) and return once S3 has answered.

        A whole object is asked for as a presigned GET on the plain session first (``core.py``: the NAR reads of
        verification and listings: bench/s3floor.py measured 0.23 ms of CPU against botocore's 1.01 ms for a small
        object, load 5), then, for any answer but 200, through
        botocore; both within ``s3.request_timeout`` (the body is then read under ``read_timeout`` per read).
        Raises ObjectNotFound for a missing key and RangeNotSatisfiable for a range past the end.
        """
        params: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if byte_range is not None:
            params["Range"] = range_header(byte_range)
        async with self._call("GetObject", key):
            if self._http is not None and byte_range is None:
                quick = await self._quick_stream(self._http, key)
                if quick is not None:
                    return quick
            resp = await self._client.get_object(**params)
        content_range = resp.get("ContentRange")
        length = resp["ContentLength"]
        total = size_from_content_range(content_range)
        info = ObjectInfo(
            key=key,
            size=length if total is None else total,
            etag=normalize_etag(resp.get("ETag", "")),
            last_modified=resp["LastModified"],
            content_type=resp.get("ContentType"),
            content_encoding=resp.get("ContentEncoding"),
        )
        return ObjectStream(
            bucket=self.name,
            info=info,
            status=resp["ResponseMetadata"]["HTTPStatusCode"],
            content_length=length,
            content_range=content_range,
            body=resp["Body"],
        )

    async def delete_many(self, keys: Sequence[str]) -> DeleteResult:
        """Delete ``keys`` with DeleteObjects, 1000 per request, in order. An absent key counts as deleted.

        Per-key refusals are returned in ``errors``; a failed request raises (earlier batches stay deleted,
        and repeating the call is safe).
        """
        unique = list(dict.fromkeys(keys))
        result = DeleteResult()
        for start in range(0, len(unique), DELETE_BATCH):
            batch = unique[start : start + DELETE_BATCH]
            with storage_errors(f"DeleteObjects of {len(batch)} keys from {batch[0]!r}", self.name):
                resp = await self._client.delete_objects(
                    Bucket=self.name, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            refused: set[str] = set()
            for err in resp.get("Errors", []):
                code = err.get("Code", "")
                if code == "NoSuchKey":
                    continue
                refused.add(err.get("Key", ""))
                result.errors.append(DeleteError(err.get("Key", ""), code, err.get("Message", "")))
            result.deleted.extend(k for k in batch if k not in refused)
        if result.errors:
            log.warning(
                "S3 refused to delete %d of %d keys, first %s: %s",
                len(result.errors),
                len(unique),
                result.errors[0].key,
                result.errors[0].code,
            )
        return result

    async def iter_objects(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix``, in key order (ListObjectsV2, all pages); no content headers."""
        with storage_errors("ListObjectsV2", self.name):
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.name, Prefix=prefix, PaginationConfig={"PageSize": page_size})
            async for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"],
                        size=obj["Size"],
                        etag=normalize_etag(obj.get("ETag", "")),
                        last_modified=obj["LastModified"],
                    )

    async def presign_put(
        self,
        key: str,
        *,
        content_type: str,
        content_encoding: str | None = None,
        expires: timedelta | None = None,
    ) -> PresignedRequest:
        """A presigned PutObject; the client must send the returned headers unchanged (they are signed)."""
        params: dict[str, Any] = {"Bucket": self.name, "Key": key, "ContentType": content_type}
        headers = {"Content-Type": content_type}
        if content_encoding is not None:
            params["ContentEncoding"] = content_encoding
            headers["Content-Encoding"] = content_encoding
        url = await self._presign("put_object", params, expires, key)
        return PresignedRequest(url=url, method="PUT", headers=headers)

    async def presign_get(self, key: str, *, expires: timedelta | None = None, internal: bool = False) -> str:
        """A presigned GetObject URL: for clients (the read proxy's redirect mode), or with ``internal`` for the
        daemon's own plain-HTTP reads (the read proxy's streaming mode), signed for the endpoint it talks to."""
        return await self._presign("get_object", {"Bucket": self.name, "Key": key}, expires, key, internal=internal)


def _addressing_style(settings: S3Settings, endpoint_url: str | None) -> Literal["path", "virtual"]:
    if settings.addressing_style != "auto":
        return settings.addressing_style
    return "path" if endpoint_url is not None else "virtual"


@asynccontextmanager
async def open_bucket(
    settings: S3Settings,
    access_key_id: str | None,
    secret_access_key: str | None,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    max_pool_connections: int = 64,
) -> AsyncIterator[Bucket]:
    """The bucket of ``settings``, with static keys or (both None) the AWS default credential chain.

    Opening sends no request; call :meth:`Bucket.check` to find out whether the bucket answers. The timeouts
    default to ``s3.connect_timeout`` and ``s3.read_timeout``; every call is bounded by ``s3.request_timeout``.
    """
    connect_timeout = settings.connect_timeout if connect_timeout is None else connect_timeout
    read_timeout = settings.read_timeout if read_timeout is None else read_timeout
    if (access_key_id is None) != (secret_access_key is None):
        raise StorageError("an S3 access key id needs its secret access key, and the other way round")
    session = get_session()

    def config(endpoint_url: str | None) -> AioConfig:
        return AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": _addressing_style(settings, endpoint_url)},
            retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="niks3d",
        )

    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=settings.region,
                    endpoint_url=settings.endpoint_url,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                    config=config(settings.endpoint_url),
                )
            )
            presigner = client
            public = settings.public_endpoint_url
            if public is not None and public != settings.endpoint_url:
                presigner = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        region_name=settings.region,
                        endpoint_url=public,
                        aws_access_key_id=access_key_id,
                        aws_secret_access_key=secret_access_key,
                        config=config(public),
                    )
                )
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(
                f"cannot set up the S3 client for bucket {settings.bucket!r} at {settings.endpoint_url or 'AWS'}: {exc}"
            ) from exc
        http = await stack.enter_async_context(
            presigned_session(
                connections=max_pool_connections, connect_timeout=connect_timeout, read_timeout=read_timeout
            )
        )
        bounded = cast("S3Client", DeadlineClient(client, settings.request_timeout))
        static = (
            None
            if access_key_id is None or secret_access_key is None
            else Credentials(access_key_id, secret_access_key)
        )
        yield Bucket(settings=settings, client=bounded, presigner=presigner, http=http, credentials=static)
