"""A bucket written by the real Nix 2.8 (``nix copy --to file://``: xz and zstd, NAR listings, the client's own
signatures), copied into SeaweedFS object by object, then ``niks3d import``: Nix substitutes through the read
proxy with the old key trusted; ``--resign`` adds the server's signatures (Nix with only the server's key
succeeds); GC with ``--root-ttl 0s`` removes what expired and keeps what is pinned; nothing dangles."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import pytest

from testkit.nixfixtures import build_expr, salted_expr
from tests.client.storekit import delete
from tests.e2e.gcchecks import assert_closure_consistent, bucket_state
from tests.fixtures.daemon import niks3d_argv
from tests.importer.importkit import niks3d, nix_copy_to_file, old_cache_key, snapshot, upload_directory

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

# the bindings of an expression of testkit/nixfixtures.py's salted_expr (its ``mk``)
CLOSURES = """\
  shared = mk "imp-shared" "mkdir $out; echo shared $salt > $out/lib";
  onlyA = mk "imp-only-a" "mkdir $out; echo a $salt > $out/data";
  onlyB = mk "imp-only-b" "mkdir $out; echo b $salt > $out/data";
  topA = mk "imp-top-a" "mkdir $out; echo ${shared} ${onlyA} > $out/refs; echo $out > $out/self";
  topB = mk "imp-top-b" "mkdir $out; echo ${shared} ${onlyB} > $out/refs";
in [ topA topB shared onlyA onlyB ]
"""


def _nix_copy_from(url: str, tmp_path: Path, paths: list[str], keys: list[str]) -> subprocess.CompletedProcess[str]:
    store = tmp_path / f"client-{secrets.token_hex(4)}"
    argv = ["nix", "--extra-experimental-features", "nix-command", "copy", "--from", url, "--to", str(store)]
    argv += ["--option", "substituters", "", "--option", "trusted-public-keys", " ".join(keys), *paths]
    env = {"XDG_CACHE_HOME": str(tmp_path / f"xdg-{secrets.token_hex(4)}"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)


def test_a_bucket_written_by_nix_copy_is_imported_served_resigned_and_collected(start_daemon, tmp_path, request):
    top_a, top_b, shared, only_a, only_b = build_expr(salted_expr(CLOSURES, secrets.token_hex(6)), tmp_path)
    request.addfinalizer(lambda: delete(top_a, top_b, shared, only_a, only_b))
    old_key, key_file = old_cache_key(tmp_path)
    written = tmp_path / "file-cache"
    nix_copy_to_file(written, [top_a], key_file, "xz")
    nix_copy_to_file(written, [top_b], key_file, "zstd")
    daemon = start_daemon()
    keys = upload_directory(daemon.s3, written)
    assert any(k.endswith(".nar.xz") for k in keys) and any(k.endswith(".nar.zst") for k in keys), keys
    assert sum(k.endswith(".ls") for k in keys) == 5, keys

    pins = tmp_path / "release.txt"
    pins.write_text(f"# the release\n{top_a}\n")
    code, report, out = niks3d(daemon.config_path, "import", "--root-ttl", "0s", "--pin", "release", str(pins))
    assert code == 0 and report is not None, out
    assert report["counts"]["paths_registered"] == 5 and report["problems"] == [], report
    tables = asyncio.run(snapshot(daemon.dsn))
    assert len(tables["store_paths"]) == 5
    assert {kind for _, _, kind in tables["path_files"]} == {"ls"} and len(tables["path_files"]) == 5
    assert {row[6] for row in tables["store_paths"]} == {"xz", "zstd"}

    # running it again changes nothing
    code, again, out = niks3d(daemon.config_path, "import", "--root-ttl", "0s", "--pin", "release", str(pins))
    assert code == 0 and again is not None and again["counts"]["paths_registered"] == 0, out
    assert asyncio.run(snapshot(daemon.dsn)) == tables

    old = [old_key.public_key().to_text()]
    server = [k.public_key().to_text() for k in daemon.signing_keys]
    copied = _nix_copy_from(daemon.url, tmp_path, [top_a, top_b], old)
    assert copied.returncode == 0, copied.stderr
    refused = _nix_copy_from(daemon.url, tmp_path, [top_a], server)
    assert refused.returncode != 0 and "lacks a valid signature" in refused.stderr, refused.stderr

    code, resigned, out = niks3d(daemon.config_path, "import", "--resign", "--root-ttl", "0s")
    assert code == 0 and resigned is not None and resigned["counts"]["paths_resigned"] == 5, out
    state = bucket_state(daemon.s3)
    assert all(len(info.sigs) == 2 for info in state.narinfos.values()), state.narinfos
    for only in (server, old):
        copied = _nix_copy_from(daemon.url, tmp_path, [top_a, top_b], only)
        assert copied.returncode == 0, copied.stderr

    # every imported root expired at once (--root-ttl 0s); the pin keeps A's closure
    gc = subprocess.run(
        niks3d_argv("gc", "--config", str(daemon.config_path), "--force", "--json"), capture_output=True, text=True
    )
    assert gc.returncode == 0, gc.stderr
    after = bucket_state(daemon.s3)
    assert_closure_consistent(after)
    hashes = {p: Path(p).name[:32] for p in (top_a, top_b, shared, only_a, only_b)}
    assert set(after.narinfos) == {hashes[top_a], hashes[shared], hashes[only_a]}
    assert not any(k.startswith((hashes[top_b], hashes[only_b])) for k in after.sizes)
    copied = _nix_copy_from(daemon.url, tmp_path, [top_a], server)
    assert copied.returncode == 0, copied.stderr
