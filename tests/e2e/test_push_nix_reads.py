"""What stock Nix 2.8 reads from a cache `niks3 push` filled: `nix store verify` (contents and signatures),
`nix log` (build logs stored zstd-compressed with `Content-Encoding: zstd`), and content-addressed paths.

Nix reads the bucket straight from SeaweedFS as a plain HTTP binary cache, with a fresh ``XDG_CACHE_HOME`` (no
cached narinfos) and no other substituter.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import StorePath
from tests.client.storekit import build_fresh, delete
from tests.e2e.test_push import NIX, _push, _substitute
from tests.server.bucketview import get_object, s3_client

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _cache_url(daemon: Any) -> str:
    return f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}"


def _nix(daemon: Any, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``nix ARGS --store <bucket>``, with no substituter and nothing cached from an earlier call."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [*NIX, *args, "--store", _cache_url(daemon), "--option", "substituters", ""]
    return subprocess.run(argv, capture_output=True, env=env, check=False, timeout=300)


def _verify(daemon: Any, tmp_path: Path, public_keys: list[str], *paths: str) -> subprocess.CompletedProcess[bytes]:
    return _nix(
        daemon, tmp_path, "store", "verify", "--option", "trusted-public-keys", " ".join(public_keys), "-r", *paths
    )


def _public_keys(daemon: Any) -> list[str]:
    return [k.public_key().to_text() for k in daemon.signing_keys]


def _impostor(daemon: Any) -> str:
    """A public key with the name of the daemon's first key but other key material."""
    return SecretKey.generate(daemon.signing_keys[0].name).public_key().to_text()


def _narinfo(daemon: Any, path: str) -> Any:
    hash_part = StorePath.parse(path).hash
    return parse_narinfo(get_object(daemon.s3, f"{hash_part}.narinfo")[0], expected_hash=hash_part)


def test_nix_store_verify_accepts_the_pushed_closure_and_refuses_an_impostor_key(
    start_daemon, nix_fixtures, tmp_path, capsys
):
    daemon = start_daemon()
    roots = [nix_fixtures.prototest, nix_fixtures.tricky, nix_fixtures.odd_names, nix_fixtures.graph.top]
    roots.append(nix_fixtures.large)  # a multipart upload
    code, doc, err = _push(daemon, tmp_path, capsys, *roots)
    assert code == 0, err
    closure = set(doc["published"])

    good = _verify(daemon, tmp_path, _public_keys(daemon), *roots)
    assert good.returncode == 0, good.stderr.decode()
    checked = {line.split("'")[1] for line in good.stderr.decode().splitlines() if line.startswith("checking '")}
    assert checked == closure  # -r: every path of every closure was downloaded, hashed and its signature checked

    bad = _verify(daemon, tmp_path, [_impostor(daemon)], *roots)
    text = bad.stderr.decode()
    assert bad.returncode == 2, text  # Nix 2.8: exit bit 2 = untrusted, bit 1 = corrupted
    assert {p for p in closure if f"path '{p}' is untrusted" in text} == closure, text


def test_nix_store_verify_detects_a_nar_object_altered_in_the_bucket(start_daemon, nix_fixtures, tmp_path, capsys):
    """The twin of the test above: verify really downloads and hashes the NARs, so its success means something."""
    daemon = start_daemon()
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest)
    assert code == 0, err
    info = _narinfo(daemon, nix_fixtures.protodep)
    other = subprocess.run(["nix-store", "--dump", nix_fixtures.graph.leaf], capture_output=True, check=True).stdout
    s3_client(daemon.s3).put_object(
        Bucket=daemon.s3.bucket, Key=info.url, Body=zstandard.ZstdCompressor().compress(other)
    )  # a well-formed NAR, but not the one the narinfo describes
    bad = _verify(daemon, tmp_path, _public_keys(daemon), nix_fixtures.prototest)
    text = bad.stderr.decode()
    assert bad.returncode & 1, text
    assert f"path '{nix_fixtures.protodep}' was modified" in text, text
    assert f"path '{nix_fixtures.prototest}' was modified" not in text, text


def test_nix_log_reads_the_build_log_from_the_cache(start_daemon, nix_fixtures, tmp_path, capsys, request):
    daemon = start_daemon()
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.with_log)
    assert code == 0, err
    want = subprocess.run(["nix-store", "--read-log", nix_fixtures.with_log_drv], capture_output=True, check=True)
    assert b"fixture stdout line 3" in want.stdout

    got = _nix(daemon, tmp_path, "log", nix_fixtures.with_log)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout
    assert f"from '{_cache_url(daemon)}'" in got.stderr.decode()  # the cache, not the local log directory

    # Why the server must store logs with Content-Encoding: zstd. Nix 2.8 decodes the body by that header (its
    # file transfer decompresses by Content-Encoding); the same zstd bytes without the header reach the user as
    # they are. So the bucket's objects must carry the header (and a proxy must pass it on).
    key = f"log/{StorePath.parse(nix_fixtures.with_log_drv).basename}"
    body, response = get_object(daemon.s3, key)
    assert response.get("ContentEncoding") == "zstd" and body.startswith(ZSTD_MAGIC)
    s3_client(daemon.s3).put_object(Bucket=daemon.s3.bucket, Key=key, Body=body, ContentType="text/plain")
    raw = _nix(daemon, tmp_path, "log", nix_fixtures.with_log)
    assert raw.returncode == 0, raw.stderr.decode()
    assert raw.stdout == body  # undecoded zstd

    # And a path pushed with --no-logs has no log in the cache.
    quiet = build_fresh(tmp_path / "build", "no-log-pushed", "echo a line nobody uploads; echo x > $out")
    request.addfinalizer(lambda: delete(quiet))
    code, _, err = _push(daemon, tmp_path, capsys, "--no-logs", quiet)
    assert code == 0, err
    assert subprocess.run(["nix-store", "--read-log", quiet], capture_output=True, check=False).returncode == 0
    missing = _nix(daemon, tmp_path, "log", quiet)
    assert missing.returncode != 0 and b"is not available" in missing.stderr, missing.stderr.decode()


def _content_addressed_paths(workdir: Path) -> dict[str, str]:
    """Fresh content-addressed paths of each kind: recursive (``nix-store --add`` of a directory), flat
    (``--add-fixed``), and text (``builtins.toFile``), one text path referring to another."""
    salt = secrets.token_hex(8)
    tree = workdir / "ca-tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text(f"#!/bin/sh\necho {salt}\n")
    (tree / "bin" / "run").chmod(0o755)
    (tree / "data").write_bytes(secrets.token_bytes(100_000))
    (tree / "link").symlink_to("bin/run")
    flat = workdir / "ca-flat.txt"
    flat.write_text(f"flat {salt}\n")

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    text_expr = f'let a = builtins.toFile "ca-text-a" "a {salt}"; in builtins.toFile "ca-text-b" "b ${{a}}"'
    text_b = run("nix-instantiate", "--read-write-mode", "--eval", "-E", text_expr).strip('"')
    (text_a,) = run("nix-store", "--query", "--references", text_b).split()
    return {
        "recursive": run("nix-store", "--add", str(tree)),
        "flat": run("nix-store", "--add-fixed", "sha256", str(flat)),
        "text": text_b,
        "text-dependency": text_a,
    }


def _store_ca(path: str) -> str:
    out = subprocess.run([*NIX, "path-info", "--json", path], capture_output=True, text=True, check=True).stdout
    (info,) = json.loads(out)
    return info["ca"]


def test_content_addressed_paths_are_substituted_on_their_content_address(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    paths = _content_addressed_paths(tmp_path)
    request.addfinalizer(lambda: delete(*paths.values()))
    code, doc, err = _push(daemon, tmp_path, capsys, paths["recursive"], paths["flat"], paths["text"])
    assert code == 0, err
    assert set(doc["published"]) == set(paths.values())
    for kind, path in paths.items():
        ca = _narinfo(daemon, path).ca
        assert ca == _store_ca(path), kind
        assert ca.startswith({"recursive": "fixed:r:sha256:", "flat": "fixed:sha256:"}.get(kind, "text:sha256:"))

    # A content-addressed path proves itself: Nix takes it on its CA field, whatever the signatures.
    for keys in (_public_keys(daemon), [_impostor(daemon)]):
        copied = _substitute(daemon, tmp_path, [paths["recursive"], paths["flat"], paths["text"]], keys)
        assert copied.returncode == 0, copied.stderr
    store = next(p for p in tmp_path.iterdir() if p.name.startswith("client-") and p.is_dir())
    for path in paths.values():
        mine = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout
        theirs = subprocess.run(["nix-store", "--store", str(store), "--dump", path], capture_output=True, check=True)
        assert theirs.stdout == mine, path

    # The twin: without its CA field the same narinfo needs a trusted signature, and the impostor is refused.
    key = f"{StorePath.parse(paths['flat']).hash}.narinfo"
    body = get_object(daemon.s3, key)[0].decode()
    stripped = "".join(line for line in body.splitlines(keepends=True) if not line.startswith("CA: "))
    assert stripped != body
    s3_client(daemon.s3).put_object(Bucket=daemon.s3.bucket, Key=key, Body=stripped.encode())
    refused = _substitute(daemon, tmp_path, [paths["flat"]], [_impostor(daemon)])
    assert refused.returncode != 0 and "lacks a valid signature" in refused.stderr, refused.stderr
