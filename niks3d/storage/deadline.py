"""A deadline on every S3 call: ``s3.request_timeout`` for the whole call, botocore's retries included.

botocore bounds each attempt (``connect_timeout``, ``read_timeout``) but retries timeouts up to ``max_attempts``
times, so a server that accepts connections and then stops answering (a frozen process, a full disk) would hold
a request for minutes. :class:`DeadlineClient` wraps the aiobotocore client and puts each API call under one
``asyncio.timeout``; what runs out is a ``TimeoutError``, which :func:`~niks3d.storage.errors.storage_errors`
turns into a StorageError (a 503 for the HTTP layer, docs/storage.md). For GetObject the deadline covers the
answer's headers; the body is read afterwards under ``read_timeout`` per read.

A listing (a paginator: ListObjectsV2, ListParts, ListMultipartUploads) gets the deadline for each page, and a
server-side copy (CopyObject, UploadPartCopy) one that grows with its size (:func:`copy_deadline`): S3 copies
big objects at its own pace, but a frozen server must not hold a ``complete`` for ``max_attempts`` read timeouts.
"""

from __future__ import annotations

__all__ = ["COPY_RATE", "DeadlineClient", "copy_deadline"]

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

# The S3 operations the daemon sends as calls (paginators and presigning are not calls: presigning sends
# nothing, and a paginator's pages each go through the client's own timeouts).
_CALLS = frozenset(
    {
        "abort_multipart_upload",
        "complete_multipart_upload",
        "create_multipart_upload",
        "delete_object",
        "delete_objects",
        "get_object",
        "head_bucket",
        "head_object",
        "list_multipart_uploads",
        "list_objects_v2",
        "list_parts",
        "put_object",
        "upload_part",
    }
)

# The slowest server-side copy a deadline allows for: bytes per second (docs/configuration.md, s3.request_timeout).
COPY_RATE = 16 * 1024 * 1024


def copy_deadline(request_timeout: float, size: int) -> float:
    """The deadline of one CopyObject or UploadPartCopy of ``size`` bytes: ``request_timeout`` and the time the
    bytes take at :data:`COPY_RATE`."""
    return request_timeout + size / COPY_RATE


class DeadlineClient:
    """An aiobotocore S3 client whose API calls each finish within ``seconds`` or raise TimeoutError."""

    def __init__(self, client: Any, seconds: float) -> None:
        self._client = client
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "get_paginator":
            return lambda operation: _Paginator(attr(operation), self._seconds)
        if name not in _CALLS:
            return attr
        return self._bounded(attr)

    def _bounded(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        seconds = self._seconds

        @functools.wraps(call)
        async def bounded(**params: Any) -> Any:
            async with asyncio.timeout(seconds):
                return await call(**params)

        return bounded


class _Paginator:
    """An aiobotocore paginator whose pages each arrive within ``seconds`` or raise TimeoutError."""

    def __init__(self, paginator: Any, seconds: float) -> None:
        self._paginator = paginator
        self._seconds = seconds

    def paginate(self, **params: Any) -> AsyncIterator[Any]:
        return _pages(self._paginator.paginate(**params), self._seconds)


async def _pages(pages: Any, seconds: float) -> AsyncIterator[Any]:
    iterator = aiter(pages)
    while True:
        try:
            async with asyncio.timeout(seconds):
                page = await anext(iterator)
        except StopAsyncIteration:
            return
        yield page
