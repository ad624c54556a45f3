"""Read proxy modes: private (a read token as Bearer or Basic password), NARs by redirect, a prefix, and off."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.server.bucketview import get_object
from tests.server.proxykit import basic, fetch, push_closure
from tests.server.test_proxy import _nar_key


async def test_a_private_cache_needs_a_token_with_the_read_scope(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(server={"read_proxy": "private"})
    paths = await push_closure(daemon, tmp_path, seed=21, n=2)
    p = paths[-1]
    reader, admin, pusher = daemon.tokens["reader"], daemon.tokens["admin"], daemon.tokens["pusher"]
    nar_key = _nar_key(daemon, p, headers=basic(reader))
    targets = [
        "/nix-cache-info",
        f"/{p.hash}.narinfo",
        f"/{nar_key}",
        f"/{p.hash}.ls",
        "/log/" + (p.deriver or "").split("/")[-1],
    ]
    for target in targets:
        for method in ("GET", "HEAD"):
            refused = fetch(daemon.url, target, method=method)
            assert refused.status == 401, target
            assert (refused.header("WWW-Authenticate") or "").startswith("Basic "), target
            for good in (basic(reader), basic(reader, user=""), {"Authorization": f"Bearer {reader}"}, basic(admin)):
                assert fetch(daemon.url, target, method=method, headers=good).status == 200, (target, good)
        bad_headers = ("Bearer nope", "Basic !!", "Bearer \xff", "Basic \xff\xfe")  # http.client sends \xff as a byte
        for bad in (basic("not-a-token-at-all"), *({"Authorization": h} for h in bad_headers)):
            assert fetch(daemon.url, target, headers=bad).status == 401, (target, bad)
        assert fetch(daemon.url, target, headers=basic(pusher)).status == 403, target
    # A miss is still a 404 for a reader, and the landing page stays public.
    assert fetch(daemon.url, "/" + "0" * 32 + ".narinfo", headers=basic(reader)).status == 404
    assert fetch(daemon.url, "/").status == 200


async def test_nars_can_be_redirected_to_short_lived_presigned_urls(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(server={"nar_mode": "redirect", "read_proxy": "private"})
    paths = await push_closure(daemon, tmp_path, seed=22, n=1)
    key = _nar_key(daemon, paths[0], headers=basic(daemon.tokens["reader"]))
    assert fetch(daemon.url, f"/{key}").status == 401  # credentials are checked before any URL is handed out
    reply = fetch(daemon.url, f"/{key}", headers=basic(daemon.tokens["reader"]))
    assert reply.status == 302 and reply.header("Cache-Control") == "no-store"
    location = reply.header("Location") or ""
    assert location.startswith(daemon.s3.endpoint_url) and "X-Amz-Expires=300" in location
    target = urlsplit(location)
    fetched = fetch(f"{target.scheme}://{target.netloc}", f"{target.path}?{target.query}")
    assert fetched.status == 200 and fetched.body == get_object(daemon.s3, key)[0]


async def test_the_proxy_serves_under_its_prefix_only(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(server={"proxy_prefix": "/cache"})
    paths = await push_closure(daemon, tmp_path, seed=23, n=1)
    p = paths[0]
    assert fetch(daemon.url, "/cache/nix-cache-info").status == 200
    assert fetch(daemon.url, "/nix-cache-info").status == 404
    assert fetch(daemon.url, f"/cache/{p.hash}.narinfo").status == 200
    assert fetch(daemon.url, f"/{p.hash}.narinfo").status == 404
    key = _nar_key(daemon, p, prefix="/cache")
    assert fetch(daemon.url, f"/cache/{key}").body == get_object(daemon.s3, key)[0]
    assert fetch(daemon.url, f"/{key}").status == 404
    assert fetch(daemon.url, f"/cache/{p.hash}.ls").body == p.listing
    assert fetch(daemon.url, f"/cache/../{p.hash}.ls").status == 404
    page = fetch(daemon.url, "/").body.decode()
    assert f"extra-substituters = {daemon.url}/cache\n" in page


async def test_with_the_proxy_off_nothing_of_the_cache_is_served(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(server={"read_proxy": "off"})
    paths = await push_closure(daemon, tmp_path, seed=24, n=1)
    for target in ("/nix-cache-info", f"/{paths[0].hash}.narinfo", f"/{paths[0].hash}.ls"):
        assert fetch(daemon.url, target).status == 404, target
    page = fetch(daemon.url, "/").body.decode()
    assert f"extra-substituters = {daemon.s3.endpoint_url}/{daemon.s3.bucket}\n" in page
