"""The state every bucket operation shares: the two S3 clients, the settings, presigning, and HEAD.

:class:`BucketCore` holds the aiobotocore client that talks to S3 and the one that only presigns (a separate
client when ``s3.public_endpoint_url`` differs from ``s3.endpoint_url``, because SigV4 signs the host: the URL
must be signed for the host the client will contact, it cannot be rewritten afterwards). Presigning is local
computation and no request; with static keys, HEAD, GET and PUT URLs are signed by botocore's SigV4 query
signer alone (``presign.py``: about a third of the CPU of aiobotocore's ``generate_presigned_url``). The
multipart and object operations build on this class (``multipart.py``, ``s3.py``).

HEAD, which the push path sends for every uploaded object, goes as a presigned request through a plain aiohttp
session when the bucket has one: a botocore HeadObject costs about 1 ms of CPU, the presigned request about half
(signing included). Only the plain answers are taken from it (200: the metadata, 404: absent); anything else, a
403, a 5xx, throttling or a connection error, is asked again through botocore, which retries and names the error;
after a failure to connect at all, every later HEAD goes through botocore. :meth:`Bucket.get_many` (the bulk
reads of import and fsck) GETs small objects the same way, under the same rules, and :meth:`Bucket.put` PUTs
bodies of up to 1 MiB (narinfos, small NARs: two per path that stock Nix writes) the same way: the presigned
PUT signs ``Content-Type``, ``x-amz-checksum-sha256`` and the other headers, so S3 still checks the body's
SHA-256 (docs/storage.md); any answer but 200 is sent again through botocore.

The presigned attempt and botocore's retries after it are one S3 call (:meth:`BucketCore._call`): together they
finish within ``s3.request_timeout`` (docs/configuration.md), so a frozen S3 costs one request timeout, not a
read timeout and then a request timeout.
"""

from __future__ import annotations

__all__ = ["MAX_PRESIGN_SECONDS", "QUICK_PUT_LIMIT", "BucketCore"]

import asyncio
import email.utils
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from niks3d.config import S3Settings
from niks3d.errors import ObjectNotFound
from niks3d.storage.errors import error_code, error_status, storage_errors, translate_error
from niks3d.storage.models import ObjectInfo, normalize_etag
from niks3d.storage.presign import PROBE_KEY, QuickPresigner, request_headers
from niks3d.storage.stream import ObjectStream, PlainBody

if TYPE_CHECKING:  # the stubs are a development dependency only
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

# SigV4 presigned URLs live at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# A quick HEAD's URL is used at once, by this daemon only.
_QUICK_HEAD_EXPIRY = timedelta(minutes=1)
# What a presigned request on the plain session may raise: it is then sent again through botocore.
_QUICK_FAILURES = (aiohttp.ClientError, TimeoutError, OSError, ValueError, TypeError)
# Bodies up to this size PUT through the plain session (aiohttp warns about larger bytes bodies).
QUICK_PUT_LIMIT = 1 << 20


class BucketCore:
    """One bucket reached through one aiobotocore client; see :func:`niks3d.storage.open_bucket`."""

    def __init__(
        self,
        *,
        settings: S3Settings,
        client: S3Client,
        presigner: S3Client,
        http: aiohttp.ClientSession | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.bucket
        self._client = client
        self._presigner = presigner
        self._http = http
        # Static keys: URLs are signed without aiobotocore's pipeline (presign.py), for each endpoint once its
        # address is learned (internal: True for s3.endpoint_url, False for the clients' endpoint).
        self._credentials = credentials
        self._quick: dict[bool, QuickPresigner | None] = {}

    def __repr__(self) -> str:
        return f"<Bucket {self.name!r} at {self.endpoint_url}>"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint this daemon talks to."""
        return str(self._client.meta.endpoint_url)

    @asynccontextmanager
    async def _call(self, operation: str, key: str | None = None) -> AsyncIterator[None]:
        """One S3 call, its presigned attempt and botocore's retries together, within ``s3.request_timeout``;
        what runs out is a StorageError naming ``operation`` and ``key``."""
        with storage_errors(operation, self.name, key):
            async with asyncio.timeout(self.settings.request_timeout):
                yield

    def _expires_in(self, expires: timedelta | None) -> int:
        seconds = int((expires if expires is not None else self.settings.presign_expiry).total_seconds())
        return min(max(seconds, 1), MAX_PRESIGN_SECONDS)

    async def _presign(
        self,
        client_method: str,
        params: Mapping[str, Any],
        expires: timedelta | None,
        key: str,
        *,
        internal: bool = False,
    ) -> str:
        """A presigned URL for clients (signed for ``s3.public_endpoint_url`` when it is set), or with
        ``internal`` for this daemon's own requests (signed for ``s3.endpoint_url``)."""
        expires_in = self._expires_in(expires)
        if self._credentials is not None and params.get("Bucket") == self.name:
            quick = self._quick.get(internal)
            if internal not in self._quick:
                quick = self._quick[internal] = await self._learn_address(internal)
            if quick is not None and (url := quick.presign(client_method, params, expires_in)) is not None:
                return url
        signer = self._client if internal else self._presigner
        with storage_errors(f"presigning {client_method}", self.name, key):
            return await signer.generate_presigned_url(ClientMethod=client_method, Params=params, ExpiresIn=expires_in)

    async def _learn_address(self, internal: bool) -> QuickPresigner | None:
        """The quick presigner of one endpoint, from the address of a URL aiobotocore presigned (None: every URL
        of that endpoint is presigned by aiobotocore)."""
        assert self._credentials is not None
        signer = self._client if internal else self._presigner
        with storage_errors("presigning head_object", self.name, PROBE_KEY):
            probe = await signer.generate_presigned_url(
                ClientMethod="head_object", Params={"Bucket": self.name, "Key": PROBE_KEY}, ExpiresIn=60
            )
        quick = QuickPresigner.from_probe(self._credentials, probe)
        if quick is None:
            log.info("presigned URLs of %s go through aiobotocore: its address %s is not understood", self.name, probe)
        return quick

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None when it is absent (404, NoSuchKey, or 403 AccessDenied for a key
        that S3 hides because the credentials may not list the bucket).

        A bodiless 403 from HEAD cannot tell "missing" from "wrong secret key", so a 403 is followed by a
        one-byte GET, whose XML error carries the code: AccessDenied means absent, anything else is raised.
        """
        async with self._call("HeadObject", key):
            return await self._head(key)

    async def _head(self, key: str) -> ObjectInfo | None:
        if self._http is not None:
            answered, info = await self._quick_head(self._http, key)
            if answered:
                return info
        try:
            with storage_errors("HeadObject", self.name, key):
                try:
                    resp = await self._client.head_object(Bucket=self.name, Key=key)
                except ClientError as exc:
                    if error_status(exc) == 403 and await self._forbidden_means_missing(key, exc):
                        return None
                    raise
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key=key,
            size=resp["ContentLength"],
            etag=normalize_etag(resp.get("ETag", "")),
            last_modified=resp["LastModified"],
            content_type=resp.get("ContentType"),
            content_encoding=resp.get("ContentEncoding"),
        )

    async def _quick_url(self, client_method: str, key: str) -> str:
        """The presigned URL of a quick HEAD or GET of ``key``, signed for the endpoint this daemon talks to."""
        return await self._presign(
            client_method, {"Bucket": self.name, "Key": key}, _QUICK_HEAD_EXPIRY, key, internal=True
        )

    async def _quick_head(self, http: aiohttp.ClientSession, key: str) -> tuple[bool, ObjectInfo | None]:
        """HEAD through a presigned URL (signed for the endpoint this daemon talks to): (True, metadata) for a 200,
        (True, None) for a 404, (False, None) for anything that botocore should ask again."""
        try:
            async with http.head(await self._quick_url("head_object", key), allow_redirects=False) as resp:
                if resp.status == 404:
                    return True, None
                info = _answered_info(key, resp)
                if info is None:
                    log.debug("HEAD %s answered %d: asking again through botocore", key, resp.status)
                    return False, None
                return True, info
        except _QUICK_FAILURES as exc:
            self._quick_failed(f"HEAD {key}", exc)
            return False, None

    async def _quick_stream(self, http: aiohttp.ClientSession, key: str) -> ObjectStream | None:
        """GET a whole object through a presigned URL, its body to be streamed (a NAR read to verify it or to
        derive its listing: docs/security.md, rules 1 and 8): the open stream for a 200 with its length, None for
        anything that botocore should ask again (which retries and names the error: a 404 is ObjectNotFound)."""
        try:
            resp = await http.get(await self._quick_url("get_object", key), allow_redirects=False)
        except _QUICK_FAILURES as exc:
            self._quick_failed(f"GET {key}", exc)
            return None
        info = _answered_info(key, resp)
        if info is None or resp.content_length is None:
            log.debug("GET %s answered %d: asking again through botocore", key, resp.status)
            resp.release()
            return None
        return ObjectStream(
            bucket=self.name,
            info=info,
            status=200,
            content_length=resp.content_length,
            content_range=None,
            body=PlainBody(resp, resp.content_length),
        )

    async def _quick_get(self, http: aiohttp.ClientSession, key: str, limit: int) -> tuple[bool, bytes | None]:
        """GET a small object through a presigned URL, as :meth:`_quick_head` does HEAD: (True, body) for a 200 of
        at most ``limit`` bytes, (True, None) for a 404, (False, None) for anything that botocore should ask
        again (which retries and names the error)."""
        try:
            async with http.get(await self._quick_url("get_object", key), allow_redirects=False) as resp:
                if resp.status == 404:
                    return True, None
                if resp.status != 200 or (resp.content_length or 0) > limit:
                    log.debug("GET %s answered %d: asking again through botocore", key, resp.status)
                    return False, None
                body = await resp.content.read(limit + 1)
                if len(body) > limit or (resp.content_length is not None and len(body) != resp.content_length):
                    return False, None
                return True, body
        except _QUICK_FAILURES as exc:
            self._quick_failed(f"GET {key}", exc)
            return False, None

    async def _quick_put(
        self, http: aiohttp.ClientSession, key: str, body: bytes | bytearray | memoryview, params: Mapping[str, Any]
    ) -> bool:
        """PutObject through a presigned URL, as :meth:`_quick_head` does HEAD: True once S3 answered 200,
        False for anything that botocore should send again (which retries and names the error). ``params`` are
        PutObject's (ContentType, ChecksumSHA256, ContentEncoding, CacheControl): each is signed as its header."""
        headers = request_headers("put_object", params)
        if headers is None:
            return False
        try:
            url = await self._presign(
                "put_object", {"Bucket": self.name, "Key": key, **params}, _QUICK_HEAD_EXPIRY, key, internal=True
            )
            async with http.put(url, data=body, headers=headers, allow_redirects=False) as resp:
                if resp.status != 200:
                    log.debug("PUT %s answered %d: sending it again through botocore", key, resp.status)
                    return False
                await resp.read()
                return True
        except _QUICK_FAILURES as exc:
            self._quick_failed(f"PUT {key}", exc)
            return False

    async def _quick_copy(self, http: aiohttp.ClientSession, target: str, params: Mapping[str, Any]) -> bool:
        """CopyObject through a URL presigned here (static keys only), as :meth:`_quick_put` does PutObject: True
        once S3 answered 200 with a CopyObjectResult (S3 may answer a copy 200 and an error in the body), False for
        anything that botocore should send again (which retries, and names the error: a missing source is
        ObjectNotFound)."""
        headers = request_headers("copy_object", params)
        if headers is None or self._credentials is None:
            return False
        try:
            url = await self._presign("copy_object", params, _QUICK_HEAD_EXPIRY, target, internal=True)
            if self._quick.get(True) is None:
                return False  # signed by aiobotocore: its headers might not be these
            async with http.put(url, headers=headers, allow_redirects=False) as resp:
                body = await resp.read()
                if resp.status != 200 or b"<CopyObjectResult" not in body or b"<Error>" in body:
                    log.debug("CopyObject to %s answered %d: sending it again through botocore", target, resp.status)
                    return False
                return True
        except _QUICK_FAILURES as exc:
            self._quick_failed(f"CopyObject to {target}", exc)
            return False

    def _quick_failed(self, what: str, exc: BaseException) -> None:
        """After a presigned request on the plain session failed (the caller then sends it through botocore,
        which retries and names the error). If the endpoint cannot be reached this way at all (a proxy botocore
        knows of from the environment, say), every later request goes through botocore, rather than waiting for
        a connection every time."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            log.warning("%s without botocore failed (%s); using botocore from now on", what, exc)
            self._http = None
        else:
            log.debug("%s failed (%s): sending it again through botocore", what, exc)

    async def _forbidden_means_missing(self, key: str, head_error: ClientError) -> bool:
        """After HEAD answered 403: whether a ranged GET says AccessDenied/NoSuchKey (the key is absent)."""
        try:
            resp = await self._client.get_object(Bucket=self.name, Key=key, Range="bytes=0-0")
        except ClientError as probe:
            code = error_code(probe)
            if code in ("AccessDenied", "NoSuchKey"):
                log.debug("HEAD %s answered 403 and GET %s: treating the key as absent", key, code)
                return True
            raise translate_error(probe, operation="HeadObject", bucket=self.name, key=key) from head_error
        resp["Body"].close()
        return False


def _answered_info(key: str, resp: aiohttp.ClientResponse) -> ObjectInfo | None:
    """The metadata of a quick HEAD's or GET's 200 answer; None for any other answer, or one without the length or
    the modification time (botocore is then asked)."""
    headers = resp.headers
    if resp.status != 200 or resp.content_length is None or "Last-Modified" not in headers:
        return None
    modified = email.utils.parsedate_to_datetime(headers["Last-Modified"])
    return ObjectInfo(
        key=key,
        size=resp.content_length,
        etag=normalize_etag(headers.get("ETag", "")),
        last_modified=modified if modified.tzinfo is not None else modified.replace(tzinfo=UTC),
        content_type=headers.get("Content-Type"),
        content_encoding=headers.get("Content-Encoding"),
    )
