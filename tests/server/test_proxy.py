"""The read proxy over HTTP against the real daemon, PostgreSQL and SeaweedFS: nix-cache-info, narinfos, NARs
(Range, HEAD, ETag/304, lengths), listings and build logs (stored Content-Encoding, or decoded)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import zstandard

from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.nix32 import encode
from tests.server.bucketview import get_object
from tests.server.proxykit import fetch, push, push_closure
from tests.server.pushkit import make_path


def _nar_key(daemon: Any, path: Any, *, prefix: str = "", headers: dict[str, str] | None = None) -> str:
    """The NAR key of a pushed path, from the narinfo the proxy serves."""
    reply = fetch(daemon.url, f"{prefix}/{path.hash}.narinfo", headers=headers)
    assert reply.status == 200
    return parse_narinfo(reply.body).url


async def test_nix_cache_info_and_narinfos_are_the_bytes_in_the_bucket(daemon: Any, tmp_path: Path) -> None:
    paths = await push_closure(daemon, tmp_path, seed=1)
    info = fetch(daemon.url, "/nix-cache-info")
    assert info.status == 200 and info.header("Content-Type") == "text/x-nix-cache-info"
    assert info.body == get_object(daemon.s3, "nix-cache-info")[0]
    for p in paths:
        reply = fetch(daemon.url, f"/{p.hash}.narinfo")
        assert reply.status == 200, reply.body
        assert reply.header("Content-Type") == "text/x-nix-narinfo"
        assert reply.body == get_object(daemon.s3, f"{p.hash}.narinfo")[0]
        assert int(reply.header("Content-Length") or -1) == len(reply.body)
        assert reply.header("Content-Encoding") is None
        head = fetch(daemon.url, f"/{p.hash}.narinfo", method="HEAD")
        assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(len(reply.body)))
        again = fetch(daemon.url, f"/{p.hash}.narinfo", headers={"If-None-Match": reply.header("ETag") or "x"})
        assert (again.status, again.body) == (304, b"")
    missing = encode(random.Random(7).randbytes(20))
    for target in (f"/{missing}.narinfo", "/not-a-hash.narinfo", f"/{missing.upper()}.narinfo", "/.narinfo"):
        reply = fetch(daemon.url, target)
        assert reply.status == 404, target
        assert fetch(daemon.url, target, method="HEAD").status == 404


async def test_nars_are_streamed_with_ranges_lengths_and_etags(daemon: Any, tmp_path: Path) -> None:
    rng = random.Random(2)
    big = make_path(tmp_path, rng, "big", size=3 << 20, incompressible=True)
    await push(daemon, [big])
    key = _nar_key(daemon, big)
    stored, meta = get_object(daemon.s3, key)
    size = len(stored)

    whole = fetch(daemon.url, f"/{key}")
    assert whole.status == 200 and whole.complete and whole.body == stored
    assert whole.header("Content-Length") == str(size) and whole.header("Accept-Ranges") == "bytes"
    assert whole.header("Content-Type") == "application/x-nix-nar" and whole.header("Content-Encoding") is None
    etag = whole.header("ETag")
    assert etag and etag.strip('"') == meta["ETag"].strip('"')

    head = fetch(daemon.url, f"/{key}", method="HEAD")
    assert (head.status, head.body, head.header("Content-Length"), head.header("ETag")) == (200, b"", str(size), etag)

    for spec, start, end in (
        ("bytes=0-99", 0, 99),
        (f"bytes={size - 10}-", size - 10, size - 1),
        ("bytes=-1000", size - 1000, size - 1),
        (f"bytes=1000-{size + 5000}", 1000, size - 1),
        # An end past the object is clamped (RFC 9110 section 14.1.2), however large.
        ("bytes=0-9999999999999999999", 0, size - 1),
        ("bytes=10-9223372036854775807", 10, size - 1),
    ):
        part = fetch(daemon.url, f"/{key}", headers={"Range": spec})
        assert part.status == 206, spec
        assert part.body == stored[start : end + 1], spec
        assert part.header("Content-Range") == f"bytes {start}-{end}/{size}", spec
        assert part.header("Content-Length") == str(end - start + 1), spec
    beyond = fetch(daemon.url, f"/{key}", headers={"Range": f"bytes={size}-"})
    assert beyond.status == 416 and beyond.header("Content-Range") == f"bytes */{size}"
    # Several ranges, other units, nonsense and non-ASCII digits (Arabic-Indic, fullwidth; sent as UTF-8) are
    # ignored: the whole NAR.
    arabic, fullwidth = "bytes=\u0660-\u0669".encode(), "bytes=\uff10-\uff19".encode()
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=abc", arabic, fullwidth):
        reply = fetch(daemon.url, f"/{key}", headers={"Range": ignored})
        assert (reply.status, len(reply.body)) == (200, size), ignored

    assert fetch(daemon.url, f"/{key}", headers={"If-None-Match": etag}).status == 304
    assert fetch(daemon.url, f"/{key}", method="HEAD", headers={"If-None-Match": etag}).status == 304
    assert fetch(daemon.url, f"/{key}", headers={"If-None-Match": '"other"'}).status == 200
    # Weak comparison on GET and HEAD alike (RFC 9110 section 13.1.2).
    for condition in (f"W/{etag}", f'"other", W/{etag}', "*"):
        assert fetch(daemon.url, f"/{key}", headers={"If-None-Match": condition}).status == 304, condition
        assert fetch(daemon.url, f"/{key}", method="HEAD", headers={"If-None-Match": condition}).status == 304
    assert fetch(daemon.url, f"/{key}", headers={"If-None-Match": 'W/"other"'}).status == 200
    absent = "nar/" + encode(rng.randbytes(32)) + ".nar.zst"
    assert fetch(daemon.url, f"/{absent}").status == 404
    assert fetch(daemon.url, f"/{absent}", method="HEAD").status == 404


async def test_listings_and_logs_keep_their_encoding_for_clients_that_take_it(daemon: Any, tmp_path: Path) -> None:
    paths = await push_closure(daemon, tmp_path, seed=3, n=2)
    p = paths[-1]
    listing = fetch(daemon.url, f"/{p.hash}.ls")
    assert listing.status == 200 and listing.body == p.listing
    assert listing.header("Content-Type") == "application/json"

    log_target = "/log/" + p.deriver.split("/")[-1]  # type: ignore[union-attr]
    stored, meta = get_object(daemon.s3, log_target[1:])
    assert meta["ContentEncoding"] == "zstd"
    encoded = fetch(daemon.url, log_target, headers={"Accept-Encoding": "gzip, zstd"})
    assert encoded.status == 200 and encoded.header("Content-Encoding") == "zstd"
    assert encoded.body == stored and encoded.header("Content-Length") == str(len(stored))
    assert zstandard.ZstdDecompressor().decompressobj().decompress(encoded.body) == p.log
    for accept in (None, "gzip", "zstd;q=0", "identity"):
        plain = fetch(daemon.url, log_target, headers={"Accept-Encoding": accept} if accept else {})
        assert plain.status == 200 and plain.complete, accept
        assert plain.header("Content-Encoding") is None and plain.body == p.log, accept
        assert plain.header("Vary") == "Accept-Encoding"
        assert plain.header("Content-Type") == "text/plain; charset=utf-8"
    head = fetch(daemon.url, log_target, method="HEAD", headers={"Accept-Encoding": "zstd"})
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(len(stored)))
    assert fetch(daemon.url, log_target[:-6] + "zz.drv").status == 404


async def test_log_names_with_query_characters_are_read_from_the_raw_path(daemon: Any, tmp_path: Path) -> None:
    odd = make_path(tmp_path, random.Random(4), "a+b=c?d", log=True)
    await push(daemon, [odd])
    drv = odd.deriver.split("/")[-1]  # type: ignore[union-attr]
    assert "?" in drv and "+" in drv and "=" in drv
    raw = fetch(daemon.url, f"/log/{drv}")  # as Nix sends it: nothing percent-encoded
    assert raw.status == 200 and raw.body == odd.log
    encoded = fetch(daemon.url, "/log/" + drv.replace("?", "%3F").replace("+", "%2B").replace("=", "%3D"))
    assert encoded.status == 200 and encoded.body == odd.log
