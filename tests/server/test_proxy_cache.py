"""The narinfo cache: bounded memory, one lookup per hash at a time, and correct under pushes, deletes and a
lost notification connection (unit tests with a fake database, then the real daemon and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import asyncpg

from niks3d.nix.nix32 import encode
from niks3d.server.narinfo_cache import ENTRY_OVERHEAD, NEGATIVE_TTL, NarinfoCache, _apply, notify_store_paths
from niks3d.server.proxy import LISTENER_NAME
from tests.server.proxykit import fetch, make_path, push, push_closure


class FakeDb:
    def __init__(self, rows: dict[str, str] | None = None, delay: float = 0.0) -> None:
        self.rows = rows or {}
        self.calls: list[str] = []
        self.delay = delay

    async def fetch(self, hash_part: str) -> str | None:
        self.calls.append(hash_part)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.rows.get(hash_part)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _hashes(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [encode(rng.randbytes(20)) for _ in range(n)]


def _live(db: FakeDb, **kwargs: Any) -> NarinfoCache:
    cache = NarinfoCache(db.fetch, **{"max_bytes": 1 << 20, **kwargs})
    cache.resume()
    return cache


async def test_found_narinfos_are_remembered_within_the_byte_budget() -> None:
    hashes = _hashes(20)
    db = FakeDb({h: f"StorePath: /nix/store/{h}-x\n" + "x" * 200 for h in hashes})
    entry_cost = len(db.rows[hashes[0]]) + ENTRY_OVERHEAD
    cache = _live(db, max_bytes=5 * entry_cost)
    for h in hashes:
        assert (await cache.get(h)).body == db.rows[h].encode()  # type: ignore[union-attr]
    assert cache.entries == 5 and cache.bytes == 5 * entry_cost and cache.evictions == 15
    db.calls.clear()
    for h in hashes[-5:]:
        assert cache.hit(h) is not None
        await cache.get(h)
    assert db.calls == []
    await cache.get(hashes[0])  # evicted: asked again
    assert db.calls == [hashes[0]]


async def test_misses_are_remembered_briefly_and_in_bounded_number() -> None:
    clock = Clock()
    db = FakeDb()
    cache = _live(db, max_negative=100, clock=clock)
    flood = _hashes(1000, seed=1)
    for h in flood:
        assert await cache.get(h) is None
    assert cache.negative_entries == 100
    db.calls.clear()
    await cache.get(flood[-1])
    assert db.calls == []  # a recent miss is answered from memory
    clock.now += 10
    await cache.get(flood[-1])
    assert db.calls == [flood[-1]]  # and forgotten after its TTL


async def test_concurrent_requests_for_one_hash_share_one_lookup() -> None:
    [h] = _hashes(1, seed=2)
    db = FakeDb({h: "narinfo\n"}, delay=0.05)
    cache = _live(db)
    results = await asyncio.gather(*(cache.get(h) for _ in range(50)))
    assert db.calls == [h] and all(r is results[0] for r in results)


async def test_a_change_during_a_lookup_is_answered_but_not_remembered() -> None:
    [h] = _hashes(1, seed=3)
    db = FakeDb({h: "narinfo\n"}, delay=0.05)
    cache = _live(db)
    task = asyncio.create_task(cache.get(h))
    await asyncio.sleep(0.01)
    _apply(cache, "-" + h)  # GC deleted it while the query ran: the row the query read may be the old one
    assert (await task) is not None
    assert cache.hit(h) is None and cache.entries == 0


async def test_notifications_forget_what_they_name_and_nothing_else() -> None:
    a, b, c = _hashes(3, seed=4)
    db = FakeDb({a: "a\n", b: "b\n"})
    cache = _live(db)
    for h in (a, b, c):
        await cache.get(h)
    _apply(cache, f"-{a}")
    _apply(cache, f"+{c}")
    assert cache.hit(a) is None and cache.hit(b) is not None and cache.negative_entries == 0
    _apply(cache, "garbage")  # an unknown payload: forget everything, to be safe
    assert cache.entries == 0


async def test_nothing_is_remembered_without_notifications() -> None:
    [h] = _hashes(1, seed=5)
    db = FakeDb({h: "x\n"})
    cache = NarinfoCache(db.fetch, max_bytes=1 << 20)  # never resumed: LISTEN is not in place
    await cache.get(h)
    await cache.get(h)
    assert db.calls == [h, h] and cache.entries == 0 and not cache.enabled
    cache.resume()
    await cache.get(h)
    cache.suspend()
    assert cache.entries == 0 and cache.hit(h) is None


async def wait_live(daemon: Any) -> None:
    """Wait until the daemon's narinfo cache follows notifications (it starts a moment after /ready)."""
    deadline = time.monotonic() + 10
    while b"niks3d_narinfo_cache_live 1.0" not in fetch(daemon.url, "/metrics").body:
        assert time.monotonic() < deadline, "the narinfo cache did not go live"
        await asyncio.sleep(0.05)


async def eventually_status(daemon: Any, target: str, status: int, within: float = 1.0) -> None:
    """NOTIFY is delivered asynchronously: allow it a moment (far less than any TTL)."""
    deadline = time.monotonic() + within
    while (got := fetch(daemon.url, target).status) != status:
        assert time.monotonic() < deadline, f"{target}: still {got}, expected {status}"
        await asyncio.sleep(0.02)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def _delete_path(dsn: str, hash_part: str, *, notify: bool) -> None:
    conn = await _connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM store_paths WHERE hash = $1", hash_part)
            if notify:
                await notify_store_paths(conn, deleted=[hash_part])
    finally:
        await conn.close()


async def test_deletes_with_a_notification_are_seen_at_once(daemon: Any, tmp_path: Path) -> None:
    paths = await push_closure(daemon, tmp_path, seed=31, n=3)
    await wait_live(daemon)
    top, middle = paths[-1], paths[-2]
    url = f"/{top.hash}.narinfo"
    assert fetch(daemon.url, url).status == 200  # now cached
    await _delete_path(daemon.dsn, top.hash, notify=True)
    await eventually_status(daemon, url, 404)
    # The negative twin: a delete nobody announces is not seen while the entry lives, which is why GC notifies.
    assert fetch(daemon.url, f"/{middle.hash}.narinfo").status == 200
    conn = await _connect(daemon.dsn)
    try:
        await conn.execute("DELETE FROM path_references WHERE reference = $1", middle.hash)
        await conn.execute("DELETE FROM store_paths WHERE hash = $1", middle.hash)
    finally:
        await conn.close()
    assert fetch(daemon.url, f"/{middle.hash}.narinfo").status == 200


async def test_publications_with_a_notification_are_seen_at_once(daemon: Any, tmp_path: Path) -> None:
    await wait_live(daemon)
    fresh = make_path(tmp_path, random.Random(32), "fresh")
    url = f"/{fresh.hash}.narinfo"
    missed_at = time.monotonic()
    assert fetch(daemon.url, url).status == 404  # the miss is remembered for a few seconds
    await push(daemon, [fresh])
    conn = await _connect(daemon.dsn)
    try:
        await notify_store_paths(conn, published=[fresh.hash])
    finally:
        await conn.close()
    await eventually_status(daemon, url, 200)
    assert time.monotonic() - missed_at < NEGATIVE_TTL  # seen through the notification, not by expiry


async def test_a_lost_notification_connection_empties_the_cache(daemon: Any, tmp_path: Path) -> None:
    paths = await push_closure(daemon, tmp_path, seed=33, n=1)
    await wait_live(daemon)
    p = paths[0]
    assert fetch(daemon.url, f"/{p.hash}.narinfo").status == 200  # cached
    conn = await _connect(daemon.dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            LISTENER_NAME,
        )
        assert killed == 1
        # Changes made while nobody listens are never announced to this daemon ...
        await conn.execute("DELETE FROM store_paths WHERE hash = $1", p.hash)
        # ... yet it does not serve the stale entry, and it listens again soon after.
        deadline = time.monotonic() + 10
        while (
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", LISTENER_NAME) < 1
        ):
            assert time.monotonic() < deadline, "the daemon did not listen again"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert fetch(daemon.url, f"/{p.hash}.narinfo").status == 404


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_remembered() -> None:
    [h] = _hashes(1, seed=6)
    calls = 0

    async def failing(hash_part: str) -> str | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ConnectionResetError("the database went away")

    cache = NarinfoCache(failing, max_bytes=1 << 20)
    cache.resume()
    results = await asyncio.gather(*(cache.get(h) for _ in range(5)), return_exceptions=True)
    assert calls == 1 and all(isinstance(r, ConnectionResetError) for r in results)
    assert cache.entries == 0 and cache.negative_entries == 0
    with contextlib.suppress(ConnectionResetError):
        await cache.get(h)
    assert calls == 2
