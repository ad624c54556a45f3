"""The write path of stock Nix under attack (docs/api.md, stock Nix as a writer): a NAR altered in flight, a
client that PUTs a wrong NAR or a narinfo that lies, a narinfo whose reference was never uploaded, a truncated
upload, a different narinfo for a published path; and named roots through the cache URL, kept by GC.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zstandard

from niks3d.nix.narinfo import NarInfo
from niks3d.nix.nix32 import encode
from niks3d.nix.storepath import StorePath
from tests.client.storekit import delete
from tests.e2e.test_gc import _niks3
from tests.e2e.test_nix_copy_to import build_closure, copy_from, copy_to, rows
from tests.security.kit import real_path
from tests.server.bucketview import s3_client

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]


def put(daemon: Any, key: str, body: bytes, token: str = "pusher", **headers: str) -> tuple[int, str]:
    auth = base64.b64encode(f"nix:{daemon.tokens[token]}".encode()).decode()
    req = urllib.request.Request(
        f"{daemon.url}/{key}", data=body, method="PUT", headers={"Authorization": f"Basic {auth}", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def in_bucket(daemon: Any, key: str) -> bool:
    try:
        s3_client(daemon.s3).head_object(Bucket=daemon.s3.bucket, Key=key)
    except Exception:
        return False
    return True


def nar_key(body: bytes, extension: str = "") -> str:
    return f"nar/{encode(hashlib.sha256(body).digest())}.nar{extension}"


def narinfo_for(path: str, url: str, body: bytes, nar: bytes, references: list[str]) -> bytes:
    return (
        NarInfo(
            store_path=StorePath.parse(path),
            url=url,
            compression="zstd" if url.endswith(".zst") else "none",
            file_hash=hashlib.sha256(body).digest(),
            file_size=len(body),
            nar_hash=hashlib.sha256(nar).digest(),
            nar_size=len(nar),
            references=tuple(StorePath.parse(r).basename for r in references),
        )
        .render()
        .encode()
    )


@contextmanager
def flipping_proxy(target: str) -> Iterator[str]:
    """A tiny HTTP proxy in front of ``target`` that flips one byte in the middle of every NAR PUT body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if body and self.command == "PUT" and self.path.startswith("/nar/"):
                flipped = bytearray(body)
                flipped[len(body) // 2] ^= 0x01
                body = bytes(flipped)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
            req = urllib.request.Request(target + self.path, data=body, method=self.command, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=60) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_PUT = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_nar_altered_in_flight_is_refused_and_nothing_is_published(start_daemon, tmp_path, request):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=3 * 1024 * 1024)
    request.addfinalizer(lambda: delete(top, dep))
    with flipping_proxy(daemon.url) as proxy:
        done = copy_to(tmp_path, daemon, f"{proxy}/?compression=zstd", top)
    assert done.returncode != 0
    assert "HTTP error 400" in done.stderr, done.stderr
    assert rows(daemon, "SELECT hash FROM store_paths") == []
    nars = [r["key"] for r in rows(daemon, "SELECT key FROM objects WHERE kind = 'nar'")]
    assert nars and not any(in_bucket(daemon, k) for k in nars)  # tracked as pending, never written
    assert rows(daemon, "SELECT key FROM nar_facts") == []
    # The twin: the same copy without the proxy goes through.
    good = copy_to(tmp_path, daemon, f"{daemon.url}/?compression=zstd", top)
    assert good.returncode == 0, good.stderr


def test_wrong_nars_and_lying_narinfos_are_refused(start_daemon, tmp_path, request):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=1000)
    request.addfinalizer(lambda: delete(top, dep))
    real = real_path(dep)

    # A body that is not what its key names (a valid NAR, of another path): 400, nothing in the bucket.
    key = nar_key(real.nar)
    status, text = put(daemon, key, real_path(top).nar)
    assert status == 400 and "SHA-256" in text, text
    assert not in_bucket(daemon, key)
    # A body that is what its key names but no NAR: 400 too.
    junk = b"nix-archive-1 but not really" * 10
    status, text = put(daemon, nar_key(junk), junk)
    assert status == 400 and "NAR" in text, text
    assert not in_bucket(daemon, nar_key(junk))
    # A zstd key with an uncompressed body: refused.
    status, text = put(daemon, nar_key(real.nar, ".zst"), real.nar)
    assert status == 400

    # The genuine NAR is taken (zstd, multipart or not, is covered by test_nix_copy_to.py) ...
    body = zstandard.ZstdCompressor().compress(real.nar)
    key = nar_key(body, ".zst")
    assert put(daemon, key, body)[0] == 201
    assert put(daemon, key, body)[0] == 200  # again: nothing written
    # ... but a narinfo that names it with another NarHash, or another path's NarSize, is refused.
    other = real_path(top)
    lying = narinfo_for(dep, key, body, other.nar, [])
    hash_part = StorePath.parse(dep).hash
    status, text = put(daemon, f"{hash_part}.narinfo", lying)
    assert status == 422 and "NarHash" in text, text
    # A narinfo for top whose reference (dep) was never published: refused, naming it.
    top_body = zstandard.ZstdCompressor().compress(other.nar)
    top_key = nar_key(top_body, ".zst")
    assert put(daemon, top_key, top_body)[0] == 201
    top_info = narinfo_for(top, top_key, top_body, other.nar, other.references)
    status, text = put(daemon, f"{StorePath.parse(top).hash}.narinfo", top_info)
    assert status == 422 and dep in text, text
    assert rows(daemon, "SELECT hash FROM store_paths") == []

    # The honest narinfo of dep is published; the same again is a no-op; another one is a 409.
    honest = narinfo_for(dep, key, body, real.nar, [])
    assert put(daemon, f"{hash_part}.narinfo", honest)[0] == 201
    assert put(daemon, f"{hash_part}.narinfo", honest)[0] == 200
    status, text = put(daemon, f"{hash_part}.narinfo", lying.replace(b"zstd", b"zstd"))
    assert status == 409, text
    # A read token may not write at all, and the refusal says so.
    status, text = put(daemon, f"{hash_part}.narinfo", honest, token="reader")
    assert status == 403 and "push" in text, text
    # Now top's reference is there: top is published, and stock Nix substitutes both.
    assert put(daemon, f"{StorePath.parse(top).hash}.narinfo", top_info)[0] == 201
    got, _ = copy_from(tmp_path, daemon, top)
    assert got.returncode == 0, got.stderr


def _truncated_put(daemon: Any, key: str, body: bytes) -> None:
    """PUT ``key`` announcing ``len(body)`` bytes, send half of them, and hang up."""
    auth = base64.b64encode(f"nix:{daemon.tokens['pusher']}".encode()).decode()
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"PUT /{key} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionError):
            pass


def test_a_truncated_upload_leaves_only_a_pending_object_that_gc_removes(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=20 * 1024 * 1024)
    request.addfinalizer(lambda: delete(top, dep))
    nar = real_path(top).nar
    key = nar_key(nar)
    _truncated_put(daemon, key, nar)  # 10 MiB sent: past the first part of a multipart upload
    assert [(r["state"]) for r in rows(daemon, f"SELECT state FROM objects WHERE key = '{key}'")] == ["pending"]
    assert not in_bucket(daemon, key)
    assert rows(daemon, "SELECT key FROM nar_facts") == []
    code, _out, err = _niks3(daemon, tmp_path, capsys, "collector", "gc", "--grace-period", "0s", "--json")
    assert code == 0, err
    assert rows(daemon, "SELECT key FROM objects") == []


def test_a_named_root_in_the_cache_url_keeps_its_closure_until_it_is_deleted(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    kept_top, kept_dep = build_closure(tmp_path / "kept", big=1000)
    gone_top, gone_dep = build_closure(tmp_path / "gone", big=1000)
    request.addfinalizer(lambda: delete(kept_top, kept_dep, gone_top, gone_dep))
    done = copy_to(tmp_path, daemon, f"{daemon.url}/roots/release-1/?compression=zstd", kept_top)
    assert done.returncode == 0, done.stderr
    done = copy_to(tmp_path, daemon, f"{daemon.url}/?compression=zstd", gone_top)
    assert done.returncode == 0, done.stderr
    members = urllib.request.urlopen(
        urllib.request.Request(f"{daemon.url}/api/v1/roots/release-1", headers=daemon.headers("reader"))
    )
    assert {p["path"] for p in json.load(members)["paths"]} == {kept_top, kept_dep}

    gc = ("gc", "--older-than", "0s", "--grace-period", "0s", "--json")
    code, _out, err = _niks3(daemon, tmp_path, capsys, "collector", *gc)
    assert code == 0, err
    live = {r["hash"] for r in rows(daemon, "SELECT hash FROM store_paths")}
    assert live == {StorePath.parse(p).hash for p in (kept_top, kept_dep)}
    got, _ = copy_from(tmp_path, daemon, kept_top)
    assert got.returncode == 0, got.stderr

    req = urllib.request.Request(
        f"{daemon.url}/api/v1/roots/release-1", method="DELETE", headers=daemon.headers("pinner")
    )
    assert json.load(urllib.request.urlopen(req))["deleted"] == 2
    code, _out, err = _niks3(daemon, tmp_path, capsys, "collector", *gc)
    assert code == 0, err
    assert rows(daemon, "SELECT hash FROM store_paths") == []
