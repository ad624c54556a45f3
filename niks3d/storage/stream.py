"""An open GET response from the bucket, read chunk by chunk: what the read proxy streams to Nix.

:meth:`Bucket.open_stream` sends the GET and returns an :class:`ObjectStream` once S3 has answered with its
status and headers, so a missing key or a bad range is an exception before the proxy sends its own first byte.
The body is then read with ``async for chunk in stream`` inside ``async with stream:``, which closes the
connection. A body that ends early (fewer bytes than Content-Length) or breaks off raises
:class:`~niks3d.errors.StorageError` mid-iteration, so a truncated object is never mistaken for a complete
one.
"""

from __future__ import annotations

__all__ = ["ObjectStream", "PlainBody"]

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol

import aiohttp

from niks3d.storage.errors import storage_errors
from niks3d.storage.models import ObjectInfo

DEFAULT_CHUNK_SIZE = 256 * 1024


class Body(Protocol):
    """What a stream reads from: aiobotocore's StreamingBody, or :class:`PlainBody`."""

    async def read(self, amt: int | None = None) -> bytes: ...

    def close(self) -> None: ...


class PlainBody:
    """The body of a presigned GET on the bucket's aiohttp session (storage/core.py), read as botocore's
    StreamingBody is: ``read(n)`` gives at most ``n`` bytes, ``b""`` at the end, and a body that ends before its
    Content-Length is an error, never a short object."""

    def __init__(self, response: aiohttp.ClientResponse, length: int) -> None:
        self._response = response
        self._length = length
        self._seen = 0

    async def read(self, amt: int | None = None) -> bytes:
        data = await (self._response.content.read() if amt is None else self._response.content.read(amt))
        self._seen += len(data)
        if (amt is None or not data) and self._seen != self._length:
            raise aiohttp.ClientPayloadError(f"the body ended after {self._seen} of {self._length} bytes")
        return data

    def close(self) -> None:
        self._response.release()


class ObjectStream:
    """The body of one GET (whole object: ``status`` 200; a range: 206 with ``content_range``)."""

    def __init__(
        self,
        *,
        bucket: str,
        info: ObjectInfo,
        status: int,
        content_length: int,
        content_range: str | None,
        body: Body,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.bucket = bucket
        self.info = info
        self.status = status
        self.content_length = content_length
        self.content_range = content_range
        self._body = body
        self._chunk_size = chunk_size
        self._closed = False

    def __repr__(self) -> str:
        return f"<ObjectStream {self.info.key!r} status={self.status} length={self.content_length}>"

    async def __aenter__(self) -> ObjectStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _read(self, amount: int | None) -> bytes:
        if self._closed:
            raise ValueError(f"the stream of {self.info.key!r} is closed")
        with storage_errors("GetObject", self.bucket, self.info.key):
            return await self._body.read(amount)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._read(self._chunk_size):
            yield chunk

    async def read(self) -> bytes:
        """The rest of the body in one piece (for small objects)."""
        return await self._read(None)

    async def aclose(self) -> None:
        """Release the connection; the rest of the body, if any, is discarded."""
        if not self._closed:
            self._closed = True
            self._body.close()
