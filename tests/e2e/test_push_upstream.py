"""`niks3 push` leaning on an upstream cache, end to end with Nix 2.8: a local ``file://`` cache plays
cache.nixos.org (its key is the daemon's upstream key), a path built on one of its paths is pushed, only the new
path is uploaded, and Nix with both substituters and both keys trusted gets the whole closure, signatures checked.
``--no-upstream-filter`` uploads everything; GC keeps what is live and forgets the upstream record after."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from niks3d.client.main import main
from niks3d.nix.signing import SecretKey
from testkit.nixfixtures import build_expr
from tests.client.storekit import delete
from tests.fixtures.daemon import niks3d_argv
from tests.server.bucketview import bucket_keys

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]
NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _build_pair(workdir: Path) -> tuple[str, str]:
    """``dep`` (some random bytes) and ``app``, which refers to it; both fresh (a random salt)."""
    salt = secrets.token_hex(8)
    sh = 'system = builtins.currentSystem; builder = "/bin/sh";'
    expr = (
        f'let salt = "{salt}";\n'
        f'  dep = derivation {{ name = "upstream-dep"; inherit salt; {sh} args = [ "-c" '
        '"export PATH=/bin:/usr/bin; mkdir $out; echo $salt > $out/id; head -c 300000 /dev/urandom > $out/data" ]; };\n'
        f'in [ dep (derivation {{ name = "leaning-app"; inherit salt; {sh} args = [ "-c" '
        '"export PATH=/bin:/usr/bin; mkdir $out; echo ${dep} > $out/ref" ]; }) ]\n'
    )
    dep, app = build_expr(expr, workdir)
    return dep, app


def _upstream_cache(tmp_path: Path, dep: str) -> tuple[str, str]:
    """Sign ``dep`` in the local store with a fresh upstream key and ``nix copy`` it to a ``file://`` cache;
    returns (cache URL, public key)."""
    key = SecretKey.generate("upstream-test-1")
    key_file = tmp_path / "upstream-key"
    key_file.write_text(key.to_text())
    subprocess.run([*NIX, "store", "sign", "--key-file", str(key_file), dep], check=True, capture_output=True)
    url = f"file://{tmp_path / 'upstream-cache'}"
    subprocess.run([*NIX, "copy", "--to", url, dep], check=True, capture_output=True)
    return url, key.public_key().to_text()


def _push(daemon: Any, tmp_path: Path, capsys: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    token = tmp_path / "client-token"
    token.write_text(daemon.tokens["admin"] + "\n")
    token.chmod(0o600)
    code = main(["push", "--json", "--no-progress", *args, "--server", daemon.url, "--token-file", str(token)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def _substitute(tmp_path: Path, path: str, substituters: list[str], keys: list[str]) -> subprocess.CompletedProcess:
    """What a Nix user with these substituters gets: ``nix build`` of ``path`` into a fresh chroot store, nothing
    built locally (``-j0``), signatures required."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [
        *NIX,
        "build",
        "-j0",
        "--no-link",
        "--store",
        str(tmp_path / f"client-{time.monotonic_ns()}"),
        "--option",
        "substituters",
        " ".join(substituters),
        "--option",
        "trusted-public-keys",
        " ".join(keys),
        "--option",
        "require-sigs",
        "true",
        path,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)


async def _upstream_records(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["hash"] for r in await conn.fetch("SELECT hash FROM upstream_paths ORDER BY hash")]
    finally:
        await conn.close()


def _gc(daemon: Any, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        niks3d_argv("gc", "-c", str(daemon.config_path), "--json", *args), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    run: dict[str, Any] = json.loads(done.stdout)
    return run


def test_a_push_leaning_on_upstream_uploads_only_the_new_path(start_daemon, tmp_path, capsys) -> None:
    dep, app = _build_pair(tmp_path / "build")
    try:
        upstream_url, upstream_key = _upstream_cache(tmp_path, dep)
        daemon = start_daemon(cache={"upstream_keys": [upstream_key]})
        ours = [k.public_key().to_text() for k in daemon.signing_keys]
        cache = f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}"

        code, doc, err = _push(daemon, tmp_path, capsys, app)
        assert code == 0, err
        assert [u["path"] for u in doc["uploaded"]] == [app] and doc["published"] == [app], doc
        assert doc["upstream"] == [dep] and doc["upstream_nar_bytes"] > 300000, doc
        assert "1 upstream" in err, err
        dep_hash = dep.split("/")[3][:32]
        assert not any(dep_hash in k for k in bucket_keys(daemon.s3)), "the upstream path was uploaded"
        assert asyncio.run(_upstream_records(daemon.dsn)) == [dep_hash]

        # Both substituters and both keys: the whole closure, app from here and dep from upstream.
        both = _substitute(tmp_path, app, [cache, upstream_url], [*ours, upstream_key])
        assert both.returncode == 0, both.stderr
        assert f"from '{upstream_url}'" in both.stderr and f"from '{cache}'" in both.stderr, both.stderr
        # Its negative twins: this cache alone lacks dep; without the upstream key dep is refused.
        alone = _substitute(tmp_path, app, [cache], [*ours, upstream_key])
        assert alone.returncode != 0, alone.stderr
        unsigned = _substitute(tmp_path, app, [cache, upstream_url], ours)
        assert unsigned.returncode != 0 and "is not signed by any of the keys" in unsigned.stderr, unsigned.stderr

        # GC while the root is live: nothing of the closure goes, the record stays, Nix still gets everything.
        run = _gc(daemon, "--force")
        assert run["counts"].get("paths_deleted", 0) == 0 and run["counts"].get("upstream_forgotten", 0) == 0, run
        assert asyncio.run(_upstream_records(daemon.dsn)) == [dep_hash]
        again = _substitute(tmp_path, app, [cache, upstream_url], [*ours, upstream_key])
        assert again.returncode == 0, again.stderr

        # --no-upstream-filter uploads what upstream has too.
        code, doc, err = _push(daemon, tmp_path, capsys, "--no-upstream-filter", app)
        assert code == 0, err
        assert [u["path"] for u in doc["uploaded"]] == [dep] and doc["published"] == [dep], doc
        assert doc["cached"] == [app] and doc["upstream"] == [], doc
        alone = _substitute(tmp_path, app, [cache], ours)
        assert alone.returncode == 0, alone.stderr

        # When the root expires, the paths go and, with its last referrer, the upstream record.
        run = _gc(daemon, "--force", "--older-than", "0s")
        assert run["counts"]["paths_deleted"] == 2 and run["counts"]["upstream_forgotten"] == 1, run
        assert asyncio.run(_upstream_records(daemon.dsn)) == []
        assert bucket_keys(daemon.s3) <= {"nix-cache-info"}
    finally:
        delete(app, dep)


def test_upstream_key_flag_replaces_the_servers_keys(start_daemon, tmp_path, capsys) -> None:
    dep, app = _build_pair(tmp_path / "build")
    try:
        _, upstream_key = _upstream_cache(tmp_path, dep)
        daemon = start_daemon(cache={"upstream_keys": [upstream_key]})
        other = SecretKey.generate("somebody-else-1").public_key().to_text()
        # Filtering by a key that did not sign dep: dep is pushed.
        code, doc, err = _push(daemon, tmp_path, capsys, "--upstream-key", other, app)
        assert code == 0, err
        assert sorted(doc["published"]) == sorted([app, dep]) and doc["upstream"] == [], doc
    finally:
        delete(app, dep)
