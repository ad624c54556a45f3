"""What the push domain needs from the running daemon: the pool, the bucket, the settings, the signing keys, and
the requests of the sessions it is serving, parsed once."""

from __future__ import annotations

__all__ = ["PushContext", "RequestCache"]

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from niks3d.db import uploads as db
from niks3d.errors import NotFound
from niks3d.uploads.listing import ListingCache
from niks3d.uploads.request import SessionRequest

if TYPE_CHECKING:
    import asyncpg

    from niks3d.config import Settings
    from niks3d.nix.signing import PublicKey, SecretKey
    from niks3d.storage.s3 import Bucket

# Sessions whose parsed request is kept; a push calls for one session at a time, a busy daemon for a few dozen.
REQUEST_CACHE_SIZE = 64
# ... and at most this many paths in all: a parsed path with its object plan (uploads/plan.py) costs about 2.2 KB
# (the growth of the RSS for one more request of 100,000 paths of 3 references each; 1.1 KB of it without the
# plan), so 64 of the largest sessions would hold 13 GiB and 150,000 paths hold about 320 MiB (issue 20).
REQUEST_CACHE_PATHS = 150_000


class RequestCache:
    """Parsed session requests by session id, the most recently used kept.

    A session's request is stored once, when the session is created, and never changes, so what was parsed
    for an id stays right. Parsing is not free (about 60 µs a path), and every report, URL refresh and
    ``complete`` of a push needs the request: for a closure of thousands of paths, parsing it on every call
    cost more than the call's own work. A request that is not kept is loaded from the database and parsed in a
    worker thread, once however many calls ask for it at the same time: for 100,000 paths that is seconds of
    CPU, which must not stall the event loop (issue 20).
    """

    def __init__(self, size: int = REQUEST_CACHE_SIZE, max_paths: int = REQUEST_CACHE_PATHS) -> None:
        self._size = size
        self._max_paths = max_paths
        self._paths = 0
        self._parsed: OrderedDict[uuid.UUID, SessionRequest] = OrderedDict()
        self._loading: dict[uuid.UUID, asyncio.Task[SessionRequest]] = {}

    @property
    def paths(self) -> int:
        """Paths of the requests kept now."""
        return self._paths

    def put(self, session_id: uuid.UUID, request: SessionRequest) -> None:
        """Keep the request of session ``session_id`` (just parsed when the session was opened)."""
        if session_id in self._parsed:
            self._parsed.move_to_end(session_id)
            return
        self._parsed[session_id] = request
        self._paths += len(request.paths)
        # The least recently used go first; the one just kept stays, however large.
        while len(self._parsed) > 1 and (len(self._parsed) > self._size or self._paths > self._max_paths):
            _, dropped = self._parsed.popitem(last=False)
            self._paths -= len(dropped.paths)

    async def get(self, session_id: uuid.UUID, fetch: Callable[[], Awaitable[str | None]]) -> SessionRequest:
        """The request of session ``session_id``; ``fetch`` gives its stored JSON text when it is not kept."""
        parsed = self._parsed.get(session_id)
        if parsed is not None:
            self._parsed.move_to_end(session_id)
            return parsed
        task = self._loading.get(session_id)
        if task is None:
            task = asyncio.create_task(self._load(session_id, fetch))
            self._loading[session_id] = task
            task.add_done_callback(lambda done: self._loaded(session_id, done))
        # One caller that goes away (a client hung up) does not cancel the load the others wait for.
        return await asyncio.shield(task)

    async def _load(self, session_id: uuid.UUID, fetch: Callable[[], Awaitable[str | None]]) -> SessionRequest:
        text = await fetch()
        if text is None:
            raise NotFound(f"no upload session {session_id}", code="session_not_found")
        return await asyncio.to_thread(SessionRequest.from_text, text)

    def _loaded(self, session_id: uuid.UUID, task: asyncio.Task[SessionRequest]) -> None:
        self._loading.pop(session_id, None)
        if not task.cancelled() and task.exception() is None:  # (exception() also marks it as retrieved)
            self.put(session_id, task.result())


@dataclass(frozen=True, slots=True)
class PushContext:
    pool: asyncpg.Pool
    bucket: Bucket
    settings: Settings
    signing_keys: tuple[SecretKey, ...]
    requests: RequestCache = field(default_factory=RequestCache)
    # Bounds the full verifications running at once in this daemon (s3.verify_concurrency).
    verify_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    # cache.upstream_keys, parsed: the keys that prove a push's upstream references (uploads/upstream.py)
    upstream_keys: tuple[PublicKey, ...] = ()
    # The listings of the NARs this daemon verified lately, for their paths' publication (uploads/listing.py)
    listings: ListingCache = field(default_factory=ListingCache)

    async def request_of(self, session_id: uuid.UUID) -> SessionRequest:
        """The parsed request of a session (kept in :class:`RequestCache`, else loaded and parsed off the loop)."""

        async def fetch() -> str | None:
            async with self.pool.acquire() as conn:
                return await db.load_request(conn, session_id)

        return await self.requests.get(session_id, fetch)
