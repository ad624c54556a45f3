"""A session's request is parsed once per daemon, however many reports and completes the push sends."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from niks3d.errors import InvalidRequest
from niks3d.nix.nix32 import encode
from niks3d.uploads import context
from niks3d.uploads.context import RequestCache
from niks3d.uploads.request import SessionRequest

STORE = "/nix/store/"


def _stored(name: str) -> dict[str, object]:
    path = f"{STORE}{'a' * 32}-{name}"
    nar_hash = "sha256:" + "1" * 52
    return {"roots": [path], "paths": [{"path": path, "nar_hash": nar_hash, "nar_size": 8, "references": []}]}


def test_each_session_is_parsed_once_and_the_least_recently_used_is_dropped(monkeypatch):
    parsed: list[str] = []
    real = SessionRequest.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls, data):
        parsed.append(data["paths"][0]["path"].rsplit("-", 1)[-1])
        return real(cls, data)

    monkeypatch.setattr(context.SessionRequest, "from_json", classmethod(counting))
    cache = RequestCache(size=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = cache.get(a, _stored("a"))
    assert cache.get(a, _stored("a")) is first
    assert first.paths[0].path.name == "a"
    cache.get(b, _stored("b"))
    cache.get(a, _stored("a"))  # a is now the most recently used
    cache.get(c, _stored("c"))  # drops b
    cache.get(a, _stored("a"))
    cache.get(b, _stored("b"))
    assert parsed == ["a", "b", "c", "b"]


def test_a_stored_request_that_no_longer_parses_is_an_error_every_time():
    cache = RequestCache()
    session = uuid.uuid4()
    for _ in range(2):  # nothing is kept for a request that failed
        with pytest.raises(InvalidRequest, match="must not be empty"):
            cache.get(session, {"roots": [], "paths": []})
    assert cache.get(session, _stored("fixed")).paths[0].path.name == "fixed"


def _stored_many(name: str, n: int) -> dict[str, object]:
    paths = [f"{STORE}{encode(hashlib.sha1(f'{name}{i}'.encode()).digest())}-{name}" for i in range(n)]
    nar_hash = "sha256:" + "1" * 52
    return {
        "roots": paths[:1],
        "paths": [{"path": p, "nar_hash": nar_hash, "nar_size": 8, "references": []} for p in paths],
    }


def test_the_cache_keeps_a_bounded_number_of_paths_not_only_of_sessions():
    cache = RequestCache(size=64, max_paths=10)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.get(a, _stored_many("a", 4))
    cache.get(b, _stored_many("b", 4))
    assert cache.paths == 8
    cache.get(c, _stored_many("c", 4))  # 12 > 10: a, the least recently used, goes
    assert cache.paths == 8
    big = uuid.uuid4()
    assert len(cache.get(big, _stored_many("big", 30)).paths) == 30  # larger than the bound: kept alone
    assert cache.paths == 30
