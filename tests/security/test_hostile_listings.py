"""Planted ``.ls`` listings (docs/security.md, rule 8): a writer puts a listing under the key of the victim's path
before the victim publishes it, through the push API and through stock Nix's ``PUT <hash>.ls``, or publishes a
listing that does not describe its own NAR. Afterwards the cache serves, for every published path, exactly the
listing Nix 2.8 itself writes for it (``nix copy --to file://...?write-nar-listing=1``), ``nix store ls --store
<cache>`` shows the same tree, and a listing PUT after publication is refused. Bad listings (not JSON, the wrong
shape, too large) are refused with a 4xx naming the problem, and nothing is written."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import json
import lzma
import secrets
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import zstandard

from niks3d.nix.listing import parse_listing, render_listing
from niks3d.nix.storepath import StorePath
from tests.e2e.test_nix_copy_to import copy_to, netrc, nix
from tests.security.kit import ATTACKERS, assert_substitutable, file_report, real_path, victim_pushes
from tests.server.bucketview import bucket_keys, get_object, s3_client
from tests.server.pushkit import FakePath, PushKit, make_closure

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

LIE = b'{"version":1,"root":{"type":"directory","entries":{"EVIL":{"type":"regular","size":666,"narOffset":8}}}}'


def _ls_key(path: str) -> str:
    return f"{StorePath.parse(path).hash}.ls"


def nix_listing(tmp_path: Path, path: str) -> bytes:
    """The listing Nix 2.8 writes for ``path`` (from the local store), byte for byte."""
    cache = tmp_path / f"file-cache-{StorePath.parse(path).hash}"
    done = nix(tmp_path, "copy", "--to", f"file://{cache}?write-nar-listing=1&compression=none", path)
    assert done.returncode == 0, done.stderr
    return (cache / _ls_key(path)).read_bytes()


def assert_listings_true(daemon: Any, tmp_path: Path, *paths: str) -> None:
    """The bucket's listing of each path is Nix's own, and `nix store ls` of the cache (which reads the NAR) shows
    the same tree, offsets included."""
    for path in paths:
        served, _ = get_object(daemon.s3, _ls_key(path))
        assert served == nix_listing(tmp_path, path), (path, served[:300])
        shown = nix(tmp_path, "store", "ls", "--json", "-R", "--store", daemon.url, path)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == parse_listing(served), shown.stdout[:300]


def put_ls(daemon: Any, token: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{daemon.url}/{_ls_key(path)}",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {daemon.tokens[token]}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _ls_specs(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"]: o for e in session["paths"] for o in e.get("objects", []) if o["kind"] == "ls"}


async def _rows(daemon: Any, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(daemon.dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_listing_planted_through_the_push_api_never_describes_the_victims_path(
    start_daemon, nix_fixtures, tmp_path, capsys, attacker
):
    """The attacker opens a session for the victim's (unpublished) closure, tries to upload and report lying
    listings, and aborts. Before rule 8 the listings were accepted as present, so the victim's push was told not
    to upload its own and its narinfo came with the lie; now the push API asks for no listing (there is no URL to
    put one through), a reported one is not accepted, and niks3d publishes the NARs' listings."""
    daemon = start_daemon()
    victims = [real_path(nix_fixtures.protodep), real_path(nix_fixtures.prototest)]

    async def attack() -> None:
        fakes = [
            FakePath(path=v.path, nar=v.nar, nar_hash=v.nar_hash, listing=LIE, references=v.references) for v in victims
        ]
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens[attacker])
            session = await kit.open(fakes, fakes[-1:])
            assert _ls_specs(session) == {}, session
            reports = {_ls_key(v.path): file_report(LIE, nar=False) for v in victims}
            answer = await kit.call("POST", f"/api/v1/sessions/{session['session_id']}/objects", {"objects": reports})
            assert answer["accepted"] == [], answer
            assert {m["key"] for m in answer["missing"]} == set(reports), answer
            assert all("it is not uploaded" in m["reason"] for m in answer["missing"]), answer
            await kit.call("DELETE", f"/api/v1/sessions/{session['session_id']}")

    asyncio.run(attack())
    early = {_ls_key(v.path) for v in victims} & bucket_keys(daemon.s3)
    victim_pushes(daemon, tmp_path, capsys, nix_fixtures.prototest)
    assert_listings_true(daemon, tmp_path, *(v.path for v in victims))
    assert not early, "a listing reached its key before its path was published"
    assert_substitutable(daemon, tmp_path, nix_fixtures.prototest)


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_a_listing_planted_by_a_stock_put_never_describes_the_victims_path(
    start_daemon, nix_fixtures, tmp_path, attacker
):
    """The attacker PUTs a lying `<hash>.ls` for the victim's paths before the victim's `nix copy --to` (which
    writes no listing). Today the lie stays under the key and the commit takes it as the path's listing; with
    rule 8 what is published is the NAR's. After publication the lie is refused, and Nix's own listing is a
    no-op. With the victim's own token this is a writer whose listing does not match its own NAR."""
    daemon = start_daemon()
    paths = [nix_fixtures.protodep, nix_fixtures.prototest]
    for path in paths:
        status, text = put_ls(daemon, attacker, path, LIE)
        assert status == 201, (status, text)
    early = {_ls_key(p) for p in paths} & bucket_keys(daemon.s3)
    done = copy_to(tmp_path, daemon, f"{daemon.url}/?compression=zstd", nix_fixtures.prototest)
    assert done.returncode == 0, done.stderr
    assert_listings_true(daemon, tmp_path, *paths)
    assert not early, "a listing reached its key before its path was published"

    before = get_object(daemon.s3, _ls_key(nix_fixtures.prototest))[0]
    status, text = put_ls(daemon, attacker, nix_fixtures.prototest, LIE)
    assert status == 409 and "already published" in text, (status, text)
    status, text = put_ls(daemon, attacker, nix_fixtures.prototest, nix_listing(tmp_path, nix_fixtures.prototest))
    assert status == 200, (status, text)
    assert get_object(daemon.s3, _ls_key(nix_fixtures.prototest))[0] == before
    assert_substitutable(daemon, tmp_path, nix_fixtures.prototest)


def test_a_pushed_listing_that_does_not_match_its_own_nar_is_not_published(start_daemon, tmp_path):
    """A writer pushes its own paths with listings that lie about their NARs: they are published with the
    NARs' listings (the ones `niks3 push` renders from the store)."""
    daemon = start_daemon()
    paths = make_closure(tmp_path, seed=81, n=3)
    truth = {p.path: p.listing for p in paths}
    for p in paths:
        p.listing = LIE

    async def push() -> None:
        async with aiohttp.ClientSession() as http:
            await PushKit(http, daemon.url, daemon.tokens["pusher"]).push(paths)

    asyncio.run(push())
    for p in paths:
        assert get_object(daemon.s3, _ls_key(p.path))[0] == truth[p.path]
    files = asyncio.run(_rows(daemon, "SELECT hash FROM path_files WHERE kind = 'ls'"))
    assert {r["hash"] for r in files} == {p.hash for p in paths}


BAD_LISTINGS = [
    (b"EVIL LISTING", "not JSON"),
    (b'["version", 1]', "must be a JSON object"),
    (b'{"version":2,"root":{"type":"regular","size":1}}', "version must be 1"),
    (b'{"version":1,"root":{"type":"fifo"}}', "unknown type 'fifo'"),
    (b'{"version":1,"root":{"type":"regular","size":-1}}', "non-negative integer size"),
    (b'{"version":1,"root":{"type":"directory","entries":{"a/b":{"type":"regular","size":1}}}}', "invalid entry"),
    (b'{"version":1,"root":' + b'{"type":"directory","entries":{"d":' * 70 + b"{}" + b"}}" * 70 + b"}", "nested"),
]


def test_a_malformed_or_oversized_listing_is_refused_and_nothing_is_written(start_daemon, nix_fixtures, tmp_path):
    """Stock PUT and push API alike: a 4xx naming the problem; no row, no object under the key."""
    limit = 64 * 1024
    daemon = start_daemon(server={"max_body_bytes": limit})
    path = nix_fixtures.protodep
    for body, reason in BAD_LISTINGS:
        status, text = put_ls(daemon, "pusher", path, body)
        assert status == 400 and "listing" in text and reason in text, (body[:40], status, text)
    too_large = b'{"version":1,"root":{"type":"regular","size":1}}'.ljust(limit + 1, b" ")
    status, text = put_ls(daemon, "pusher", path, too_large)
    assert status == 413, (status, text)
    # a body that decompresses past the limit
    bomb = lzma.compress(too_large * 4, format=lzma.FORMAT_XZ)
    status, text = put_ls(daemon, "pusher", path, bomb, {"Content-Encoding": "xz"})
    assert status == 413 and "larger than the limit" in text, (status, text)

    (fake,) = make_closure(tmp_path, seed=82, n=1)

    async def push(listing: bytes) -> Any:
        """A session as an older niks3d opened it, which asked for the listing's upload: its claim is the
        uploader's, and the listing is staged under the session's key."""
        async with aiohttp.ClientSession() as http:
            kit = PushKit(http, daemon.url, daemon.tokens["pusher"])
            session = await kit.open([fake], [fake])
            assert _ls_specs(session) == {}, session
            key = _ls_key(fake.path)
            conn = await asyncpg.connect(daemon.dsn)
            try:
                await conn.execute(
                    "UPDATE session_claims SET uploader = true WHERE session_id = $1 AND key = $2",
                    uuid.UUID(session["session_id"]),
                    key,
                )
            finally:
                await conn.close()
            s3_client(daemon.s3).put_object(
                Bucket=daemon.s3.bucket, Key=f"staging/{session['session_id']}/{key}", Body=listing
            )
            reports = {key: file_report(listing, nar=False)}
            answer = await kit.call("POST", f"/api/v1/sessions/{session['session_id']}/objects", {"objects": reports})
            assert answer["accepted"] == [], answer
            await kit.call("DELETE", f"/api/v1/sessions/{session['session_id']}")
            return answer

    for body, reason in [BAD_LISTINGS[0], BAD_LISTINGS[3], (too_large, f"more than the limit of {limit}")]:
        answer = asyncio.run(push(body))
        (missing,) = [m for m in answer["missing"] if m["key"] == _ls_key(fake.path)]
        assert reason in missing["reason"], answer
    assert not {_ls_key(path), _ls_key(fake.path)} & bucket_keys(daemon.s3)
    rows = asyncio.run(_rows(daemon, "SELECT key, state FROM objects WHERE kind = 'ls'"))
    assert {r["key"]: r["state"] for r in rows} == {_ls_key(fake.path): "pending"}


LISTED_EXPR = """\
derivation {
  name = "modern-listed";
  salt = "@SALT@";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    export PATH=/bin:/usr/bin; mkdir -p $out/bin; printf hi > $out/bin/hi; chmod +x $out/bin/hi
    ln -s bin/hi $out/l; touch $out/empty
  '' ];
}
"""


@pytest.mark.modern_nix
def test_modern_nix_publishes_the_nars_listing_over_a_planted_one(start_daemon, modern_nix, tmp_path):
    """Nix 2.26 writes its listings in another form (keys sorted): a planted listing is still replaced by the NAR's,
    which says what 2.26's own says, and 2.26's form of it after publication is a no-op."""
    daemon = start_daemon()
    expr = tmp_path / "listed.nix"
    expr.write_text(LISTED_EXPR.replace("@SALT@", secrets.token_hex(6)))
    out = modern_nix.nix("build", "--no-link", "--print-out-paths", "-f", str(expr)).strip()
    status, text = put_ls(daemon, "intruder", out, LIE)
    assert status == 201, (status, text)
    url = f"{daemon.url}/?compression=zstd&write-nar-listing=1"
    modern_nix.nix("copy", "--to", url, out, "--option", "netrc-file", str(netrc(tmp_path, daemon, "pusher")))
    cache = tmp_path / "file-cache"
    modern_nix.nix("copy", "--to", f"file://{cache}?write-nar-listing=1&compression=none", out)
    theirs = (cache / _ls_key(out)).read_bytes()
    assert theirs.startswith(b'{"root":')  # 2.26's form, not 2.8's
    served, _ = get_object(daemon.s3, _ls_key(out))
    assert served == render_listing(parse_listing(theirs)), (served, theirs)
    assert put_ls(daemon, "pusher", out, theirs)[0] == 200
    assert put_ls(daemon, "pusher", out, LIE)[0] == 409


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "zstd", "xz", "bzip2"])
def test_a_compressed_listing_put_is_decoded_once(start_daemon, nix_fixtures, tmp_path, encoding):
    """Nix 2.32+ sends `ls-compression=...` listings with a Content-Encoding: niks3d decodes the body itself, once
    (aiohttp decoded gzip on its own first, so niks3d's gunzip failed, and refused zstd), and publishes the NAR's
    listing. A body that is not what its Content-Encoding says is a 400 naming it."""
    daemon = start_daemon()
    path = nix_fixtures.protodep
    body = nix_listing(tmp_path, path)
    compress = {
        "gzip": gzip.compress,
        "x-gzip": gzip.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ),
        "bzip2": bz2.compress,
    }[encoding]
    status, text = put_ls(daemon, "pusher", path, b"not " + encoding.encode(), {"Content-Encoding": encoding})
    assert status == 400 and "not valid" in text, (status, text)
    status, text = put_ls(daemon, "pusher", path, compress(body), {"Content-Encoding": encoding})
    assert status == 201, (status, text)
    assert copy_to(tmp_path, daemon, f"{daemon.url}/?compression=zstd", path).returncode == 0
    assert get_object(daemon.s3, _ls_key(path))[0] == body
    assert put_ls(daemon, "pusher", path, compress(body), {"Content-Encoding": encoding})[0] == 200
