"""The read proxy's memory of narinfos, kept correct by PostgreSQL notifications.

A narinfo request is answered from here when possible, else from the ``store_paths`` row (the exact bytes that
were published to the bucket); never with an S3 round trip. The cache holds:

- found narinfos, least recently used first out, within a byte budget (``server.narinfo_cache_bytes``);
- misses, for :data:`NEGATIVE_TTL` seconds, at most :data:`MAX_NEGATIVE` of them, so a flood of random hashes
  costs a bounded amount of memory and one indexed lookup per distinct hash;
- the lookups in flight: concurrent requests for one hash share one query.

Correctness comes from the channel :data:`CHANNEL`. Whoever inserts or deletes ``store_paths`` rows calls
:func:`notify_store_paths` in the same transaction; PostgreSQL delivers the notification when (and only if) that
transaction commits, and every daemon forgets those hashes. A lookup that was in flight when a notification for
its hash arrived is answered but not remembered, since it may have read the row as it was before. The cache is
used only while the listening connection is up: it starts empty once ``LISTEN`` is in place and is emptied and
bypassed whenever that connection is lost, so a missed notification can never leave a stale entry behind.
Entries also expire after :data:`POSITIVE_TTL` seconds, a safety net for writers that do not notify.
"""

from __future__ import annotations

__all__ = ["CHANNEL", "CachedNarinfo", "NarinfoCache", "follow_changes", "notify_store_paths", "running_cache"]

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from niks3d.db.notify import CHANNEL, keep_alive, notify_store_paths

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 5.0
MAX_NEGATIVE = 32768
# A cached narinfo costs its bytes plus roughly this much for the key, the entry and the LRU links.
ENTRY_OVERHEAD = 256

# The listening connection is checked this often; a reconnect waits from RETRY_MIN up to RETRY_MAX seconds.
KEEPALIVE = 30.0
RETRY_MIN = 0.5
RETRY_MAX = 30.0

Fetch = Callable[[str], Awaitable[str | None]]
Connect = Callable[[], Awaitable["asyncpg.Connection"]]


@dataclass(frozen=True, slots=True)
class CachedNarinfo:
    """A narinfo as served: its bytes and an entity tag derived from them."""

    body: bytes
    etag: str
    expires: float

    @classmethod
    def of(cls, text: str, expires: float) -> CachedNarinfo:
        body = text.encode()
        return cls(body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"', expires)


class NarinfoCache:
    """Narinfos by hash part, read through ``fetch`` (the database); see the module docstring."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        max_bytes: int,
        max_negative: int = MAX_NEGATIVE,
        positive_ttl: float = POSITIVE_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.max_bytes = max_bytes
        self._max_negative = max_negative
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._found: OrderedDict[str, CachedNarinfo] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[CachedNarinfo | None]] = {}
        self._tainted: set[str] = set()
        self._live = False
        self.bytes = 0
        self.hits = 0
        self.lookups = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        """Whether answers are remembered: a budget is set and change notifications are being received."""
        return self._live and self.max_bytes > 0

    @property
    def entries(self) -> int:
        return len(self._found)

    @property
    def negative_entries(self) -> int:
        return len(self._missing)

    def resume(self) -> None:
        """Start remembering (called once ``LISTEN`` is in place), from an empty cache."""
        self.clear()
        self._live = True

    def suspend(self) -> None:
        """Stop remembering and forget everything (the notification connection was lost)."""
        self._live = False
        self.clear()

    def clear(self) -> None:
        self._found.clear()
        self._missing.clear()
        self.bytes = 0
        self._tainted.update(self._inflight)

    def forget(self, hashes: Iterable[str]) -> None:
        """Drop what is known about ``hashes``; lookups of them in flight are answered but not remembered."""
        for h in hashes:
            entry = self._found.pop(h, None)
            if entry is not None:
                self.bytes -= len(entry.body) + ENTRY_OVERHEAD
            self._missing.pop(h, None)
            if h in self._inflight:
                self._tainted.add(h)

    def hit(self, hash_part: str) -> CachedNarinfo | None:
        """The fresh cached narinfo of ``hash_part``, or None; never a lookup (any string may be asked)."""
        entry = self._found.get(hash_part) if self._live else None
        if entry is None or entry.expires <= self._clock():
            return None
        self._found.move_to_end(hash_part)
        self.hits += 1
        return entry

    async def get(self, hash_part: str) -> CachedNarinfo | None:
        """The narinfo of the published path ``hash_part`` (a validated hash part), or None."""
        if self._live:
            now = self._clock()
            entry = self._found.get(hash_part)
            if entry is not None:
                if entry.expires > now:
                    self._found.move_to_end(hash_part)
                    self.hits += 1
                    return entry
                self.forget((hash_part,))
            gone = self._missing.get(hash_part)
            if gone is not None:
                if gone > now:
                    self.hits += 1
                    return None
                del self._missing[hash_part]
        task = self._inflight.get(hash_part)
        if task is None:
            task = asyncio.create_task(self._load(hash_part))
            self._inflight[hash_part] = task
            task.add_done_callback(lambda _: self._landed(hash_part))
        # Shielded: a caller that goes away does not cancel the lookup others may be waiting for.
        return await asyncio.shield(task)

    async def _load(self, hash_part: str) -> CachedNarinfo | None:
        self.lookups += 1
        text = await self._fetch(hash_part)
        now = self._clock()
        if text is None:
            return None
        return CachedNarinfo.of(text, now + self._positive_ttl)

    def _landed(self, hash_part: str) -> None:
        task = self._inflight.pop(hash_part)
        tainted = hash_part in self._tainted
        self._tainted.discard(hash_part)
        if task.cancelled() or task.exception() is not None or tainted or not self.enabled:
            return
        entry = task.result()
        if entry is None:
            self._remember_missing(hash_part)
        else:
            self._remember(hash_part, entry)

    def _remember(self, hash_part: str, entry: CachedNarinfo) -> None:
        cost = len(entry.body) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._missing.pop(hash_part, None)
        old = self._found.pop(hash_part, None)
        if old is not None:
            self.bytes -= len(old.body) + ENTRY_OVERHEAD
        self._found[hash_part] = entry
        self.bytes += cost
        while self.bytes > self.max_bytes:
            _, evicted = self._found.popitem(last=False)
            self.bytes -= len(evicted.body) + ENTRY_OVERHEAD
            self.evictions += 1

    def _remember_missing(self, hash_part: str) -> None:
        self._missing[hash_part] = self._clock() + self._negative_ttl
        self._missing.move_to_end(hash_part)
        while len(self._missing) > self._max_negative:
            self._missing.popitem(last=False)


def _apply(cache: NarinfoCache, payload: str) -> None:
    """Act on one notification: ``+h1,h2`` (published) or ``-h1,h2`` (deleted); anything else clears all."""
    if payload[:1] in ("+", "-") and len(payload) > 1:
        cache.forget(payload[1:].split(","))
    else:
        cache.clear()


async def follow_changes(cache: NarinfoCache, connect: Connect) -> None:
    """Run until cancelled: ``LISTEN`` on :data:`CHANNEL` over a connection of its own and feed the cache.

    The cache is live only while that connection is; it is suspended (emptied and bypassed) whenever the
    connection fails, and resumed empty once ``LISTEN`` is in place again.
    """
    delay = RETRY_MIN
    while True:
        conn = None
        try:
            conn = await connect()
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, done=lost: done.set())
            await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: _apply(cache, payload))
            cache.resume()
            logger.info("narinfo cache: following changes on channel %s", CHANNEL)
            delay = RETRY_MIN
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), KEEPALIVE)
                if not lost.is_set():
                    await asyncio.wait_for(keep_alive(conn), KEEPALIVE / 3)
            raise ConnectionError("the server closed the connection")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "narinfo cache: no change notifications (%s); answering from the database until they are back",
                exc or type(exc).__name__,
            )
        finally:
            cache.suspend()
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


@asynccontextmanager
async def running_cache(fetch: Fetch, connect: Connect, *, max_bytes: int) -> AsyncIterator[NarinfoCache]:
    """A :class:`NarinfoCache` with :func:`follow_changes` running in the background while the block runs.

    With ``max_bytes == 0`` nothing is remembered and no connection is opened.
    """
    cache = NarinfoCache(fetch, max_bytes=max_bytes)
    task = asyncio.create_task(follow_changes(cache, connect)) if max_bytes > 0 else None
    try:
        yield cache
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
