"""The read proxy serves the cache's key space and nothing else: invalid keys, traversal attempts and every
encoding trick are 404, and no other object of the bucket can be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.bucketview import s3_client
from tests.server.proxykit import fetch, push_closure

SECRET = b"the-other-tenant-secret"

TARGETS = [
    "/private/secret.txt",
    "/nar/../private/secret.txt",
    "/nar/..%2Fprivate%2Fsecret.txt",
    "/nar/%2E%2E/private/secret.txt",
    "/nar/%2e%2e%2fprivate%2fsecret.txt",
    "/nar/..%252Fprivate%252Fsecret.txt",
    "/log/..%2Fprivate%2Fsecret.txt",
    "/log/../private/secret.txt",
    "/realisations/..%2Fprivate%2Fsecret.txt",
    "/build-trace-v2/..%2F..%2Fprivate/secret.txt",
    "/%2Fprivate%2Fsecret.txt",
    "//private/secret.txt",
    "/nar//private/secret.txt",
    "/nar/..\\private\\secret.txt",
    "/nix-cache-info/../private/secret.txt",
    "/private%2Fsecret.txt",
    "/nar/private/secret.txt",
    "/nar/secret.txt",
    "/log/secret.txt",
    "/log/private/secret.txt",
    "/log/%00",
    "/nar/%00",
    "/secret.txt.narinfo",
    "/private/secret.txt.ls",
    "/..%2Fprivate%2Fsecret.txt.ls",
    "http://127.0.0.1/private/secret.txt",
    "/nar/%E2%80%AE",
    "/log/" + "a" * 600 + ".drv",
]


@pytest.fixture
async def cache_with_secret(daemon: Any, tmp_path: Path) -> Any:
    daemon.paths = await push_closure(daemon, tmp_path, seed=11, n=2)
    client = s3_client(daemon.s3)
    for key in ("private/secret.txt", "secret.txt", "nar/secret.txt", "log/secret.txt", "abc"):
        client.put_object(Bucket=daemon.s3.bucket, Key=key, Body=SECRET)
    return daemon


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_keys_outside_the_cache_are_404(cache_with_secret: Any, method: str) -> None:
    for target in TARGETS:
        reply = fetch(cache_with_secret.url, target, method=method)
        assert reply.status in (400, 404), (target, reply.status)
        assert SECRET not in reply.body, target


def test_the_same_keys_inside_the_cache_are_served(cache_with_secret: Any) -> None:
    # The negative twin of the test above: the proxy does serve what it should, from the same bucket.
    url = cache_with_secret.url
    assert fetch(url, "/nix-cache-info").status == 200
    for p in cache_with_secret.paths:
        assert fetch(url, f"/{p.hash}.ls").body == p.listing
        assert fetch(url, f"/..%2F{p.hash}.ls").status == 404
        assert fetch(url, "/log/" + p.deriver.split("/")[-1]).body == p.log
