"""A session's request is parsed once per daemon, however many reports and completes the push sends."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest

from niks3d.errors import InvalidRequest, NotFound
from niks3d.nix.nix32 import encode
from niks3d.uploads import context
from niks3d.uploads.context import RequestCache
from niks3d.uploads.request import PreparedSession, SessionRequest

STORE = "/nix/store/"


def _stored(name: str) -> dict[str, object]:
    path = f"{STORE}{'a' * 32}-{name}"
    nar_hash = "sha256:" + "1" * 52
    return {"roots": [path], "paths": [{"path": path, "nar_hash": nar_hash, "nar_size": 8, "references": []}]}


def _fetch(body: object, calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    async def fetch() -> str | None:
        if calls is not None:
            calls.append("fetch")
        return None if body is None else json.dumps(body)

    return fetch


async def test_each_session_is_parsed_once_and_the_least_recently_used_is_dropped(monkeypatch):
    parsed: list[str] = []
    real = SessionRequest.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls, data):
        parsed.append(data["paths"][0]["path"].rsplit("-", 1)[-1])
        return real(cls, data)

    monkeypatch.setattr(context.SessionRequest, "from_json", classmethod(counting))
    cache = RequestCache(size=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = await cache.get(a, _fetch(_stored("a")))
    assert await cache.get(a, _fetch(_stored("a"))) is first
    assert first.paths[0].path.name == "a"
    await cache.get(b, _fetch(_stored("b")))
    await cache.get(a, _fetch(_stored("a")))  # a is now the most recently used
    await cache.get(c, _fetch(_stored("c")))  # drops b
    await cache.get(a, _fetch(_stored("a")))
    await cache.get(b, _fetch(_stored("b")))
    assert parsed == ["a", "b", "c", "b"]


async def test_calls_that_ask_at_once_share_one_load_and_parse():
    cache = RequestCache()
    session = uuid.uuid4()
    calls: list[str] = []
    got = await asyncio.gather(*(cache.get(session, _fetch(_stored("x"), calls)) for _ in range(5)))
    assert calls == ["fetch"]
    assert all(g is got[0] for g in got)


async def test_a_request_put_at_open_is_not_loaded_again():
    cache = RequestCache()
    session = uuid.uuid4()
    prepared = PreparedSession.of(_stored("put"))
    cache.put(session, prepared.request)
    calls: list[str] = []
    assert await cache.get(session, _fetch(_stored("other"), calls)) is prepared.request
    assert calls == []


async def test_a_stored_request_that_no_longer_parses_is_an_error_every_time():
    cache = RequestCache()
    session = uuid.uuid4()
    for _ in range(2):  # nothing is kept for a request that failed
        with pytest.raises(InvalidRequest, match="must not be empty"):
            await cache.get(session, _fetch({"roots": [], "paths": []}))
    with pytest.raises(NotFound):
        await cache.get(session, _fetch(None))
    assert (await cache.get(session, _fetch(_stored("fixed")))).paths[0].path.name == "fixed"


def _stored_many(name: str, n: int) -> dict[str, object]:
    paths = [f"{STORE}{encode(hashlib.sha1(f'{name}{i}'.encode()).digest())}-{name}" for i in range(n)]
    nar_hash = "sha256:" + "1" * 52
    return {
        "roots": paths[:1],
        "paths": [{"path": p, "nar_hash": nar_hash, "nar_size": 8, "references": []} for p in paths],
    }


async def test_the_cache_keeps_a_bounded_number_of_paths_not_only_of_sessions():
    cache = RequestCache(size=64, max_paths=10)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await cache.get(a, _fetch(_stored_many("a", 4)))
    await cache.get(b, _fetch(_stored_many("b", 4)))
    assert cache.paths == 8
    await cache.get(c, _fetch(_stored_many("c", 4)))  # 12 > 10: a, the least recently used, goes
    assert cache.paths == 8
    big = uuid.uuid4()
    assert len((await cache.get(big, _fetch(_stored_many("big", 30)))).paths) == 30  # larger than the bound: kept
    assert cache.paths == 30


def test_the_stored_text_and_digest_are_what_one_json_dumps_gives():
    body = _stored_many("enc", 50)
    body["idempotency_key"] = "k-1"
    prepared = PreparedSession.of(body)
    whole = prepared.request.to_json()
    assert prepared.stored == json.dumps(whole, separators=(",", ":"))
    canonical = json.dumps(whole, sort_keys=True, separators=(",", ":")).encode()
    assert prepared.digest == hashlib.sha256(canonical).hexdigest() == prepared.request.fingerprint()
    assert SessionRequest.from_text(prepared.stored) == prepared.request
