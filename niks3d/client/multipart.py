"""A large NAR as an S3 multipart upload, streamed: parts go up while the NAR is still being read.

A producer (a worker thread running :func:`~niks3d.client.narstream.stream_nar`) cuts the compressed stream
into parts of exactly ``part_size`` bytes; ``in_flight`` uploader tasks ``PUT`` them to their presigned URLs
in parallel. A finished part needs one of ``in_flight`` slots, which its upload frees, so at most
``in_flight + 1`` parts exist at any time (waiting or uploading, plus the one being filled), whatever the
NAR's size (see :func:`~niks3d.client.parts.parts_in_flight`).
Part URLs beyond the first batch are asked for from the server in batches as the parts come. ETags are not
kept: the server lists the parts when it completes the upload.
"""

from __future__ import annotations

__all__ = ["MultipartUploader", "PartUrls"]

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from niks3d.client.models import ObjectSpec, PartUrl
from niks3d.client.narstream import NarOutcome, PushCancelled
from niks3d.client.parts import PartSplitter
from niks3d.client.retry import RetryPolicy
from niks3d.client.transport import memory_body
from niks3d.client.upload import PresignedRequest, UploadFailed, put_presigned

logger = logging.getLogger(__name__)

URL_BATCH = 32  # part URLs asked for at a time
_HANDOFF_POLL = 0.2  # seconds between checks for cancellation while the producer waits for a free slot

RequestParts = Callable[[list[int]], Awaitable[list[PartUrl]]]
Producer = Callable[[Callable[[bytes], None], threading.Event], NarOutcome]


class PartUrls:
    """The presigned URLs of one multipart upload, fetched from the server in batches as parts need them."""

    def __init__(self, initial: list[PartUrl], request_more: RequestParts, max_parts: int) -> None:
        self._urls = {p.part_number: p for p in initial}
        self._request_more = request_more
        self._max_parts = max_parts
        self._lock = asyncio.Lock()

    async def get(self, number: int, *, fresh: bool = False) -> PresignedRequest:
        """The request for part ``number``; ``fresh`` asks the server again (after a 403: expired URL)."""
        if number > self._max_parts:
            raise UploadFailed(f"the NAR needs more than {self._max_parts} parts, the most the server allows")
        async with self._lock:
            if fresh or number not in self._urls:
                wanted = [number] if fresh else list(range(number, min(number + URL_BATCH, self._max_parts + 1)))
                for item in await self._request_more(wanted):
                    self._urls[item.part_number] = item
            found = self._urls.get(number)
        if found is None:
            raise UploadFailed(f"the server gave no URL for part {number}")
        return PresignedRequest(found.url, found.method, found.headers)


class MultipartUploader:
    """Streams one NAR into the multipart upload described by ``spec``."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        spec: ObjectSpec,
        urls: PartUrls,
        *,
        what: str,
        policy: RetryPolicy,
        in_flight: int,
        on_uploaded: Callable[[int], None] | None = None,
    ) -> None:
        if spec.action != "multipart" or not spec.part_size:
            raise ValueError(f"{spec.key} is not a multipart upload")
        self.http = http
        self.spec = spec
        self.part_size = spec.part_size
        self.urls = urls
        self.what = what
        self.policy = policy
        self.in_flight = max(1, in_flight)
        self.on_uploaded = on_uploaded
        self.parts_uploaded = 0

    async def _upload_part(self, number: int, data: memoryview) -> None:
        request = await self.urls.get(number)

        async def refresh() -> PresignedRequest:
            return await self.urls.get(number, fresh=True)

        await put_presigned(
            self.http,
            request,
            lambda: memory_body(data),
            len(data),
            what=f"{self.what} part {number}",
            policy=self.policy,
            refresh=refresh,
        )
        self.parts_uploaded += 1
        if self.on_uploaded is not None:
            self.on_uploaded(len(data))

    async def _worker(self, queue: asyncio.Queue[tuple[int, memoryview] | None], slots: threading.Semaphore) -> None:
        while (item := await queue.get()) is not None:
            try:
                await self._upload_part(*item)
            finally:
                slots.release()

    async def run(self, produce: Producer) -> NarOutcome:
        """Run ``produce(sink, cancel)`` in a thread and upload what it sinks; return its outcome.

        If the producer raises (for example :class:`~niks3d.client.narstream.NarMismatch`) or an upload
        fails, everything stops and the exception propagates; the parts already sent stay unfinished in S3
        until the server aborts the upload.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, memoryview] | None] = asyncio.Queue()
        slots = threading.Semaphore(self.in_flight)
        cancel = threading.Event()
        splitter = PartSplitter(self.part_size)

        def handoff(item: tuple[int, memoryview] | None) -> None:
            if item is not None:
                while not slots.acquire(timeout=_HANDOFF_POLL):
                    if cancel.is_set():
                        raise PushCancelled(f"stopped while uploading {self.what}")
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def sink(data: bytes) -> None:
            for part in splitter.feed(data):
                handoff(part)

        def producer() -> NarOutcome:
            outcome = produce(sink, cancel)
            last = splitter.finish()
            if last is not None:
                handoff(last)
            for _ in range(self.in_flight):
                handoff(None)
            return outcome

        workers = [asyncio.create_task(self._worker(queue, slots)) for _ in range(self.in_flight)]
        producing = asyncio.ensure_future(loop.run_in_executor(None, producer))
        tasks: list[asyncio.Future[Any]] = [producing, *workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            errors = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
            if errors:
                # A failed part upload makes the producer stop with PushCancelled: report the cause instead.
                raise next((e for e in errors if not isinstance(e, PushCancelled)), errors[0])
            return producing.result()
        finally:
            cancel.set()
            for task in workers:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
