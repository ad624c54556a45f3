"""Stock Nix 2.8 as a writer: `nix copy --to http://<niks3d>` with a netrc token (docs/api.md, stock Nix as a
writer), then what Nix reads back: `nix copy --from` into an empty chroot store that trusts only the server's key,
`nix store verify`, `nix log`. And the refusals Nix gets and prints: no token, a read-only token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.storepath import StorePath
from testkit.modernnix import ModernNix
from testkit.nixfixtures import build_expr
from tests.client.storekit import delete
from tests.e2e.test_push import NIX

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

# A closure with a reference, a listing worth writing, and a file large enough for a multipart upload (the
# write path uses 8 MiB parts), whatever the compression: the data is random.
CLOSURE = """
let
  mk = name: script: derivation {
    inherit name;
    salt = "@SALT@";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];
  };
  dep = mk "copy-dep" "echo building the dependency; mkdir $out; echo dep @SALT@ > $out/lib";
  top = mk "copy-top" ''
    echo building the top; mkdir -p $out/bin $out/share
    echo ${dep} > $out/share/ref
    printf '#!/bin/sh\\necho hi\\n' > $out/bin/hi; chmod +x $out/bin/hi
    ln -s bin/hi $out/link
    head -c @BIG@ /dev/urandom > $out/share/blob
  '';
in [ top dep ]
"""


def build_closure(workdir: Path, big: int = 9 * 1024 * 1024) -> tuple[str, str]:
    salt = secrets.token_hex(6)
    top, dep = build_expr(CLOSURE.replace("@SALT@", salt).replace("@BIG@", str(big)), workdir)
    return top, dep


def netrc(tmp_path: Path, daemon: Any, token: str | None) -> Path:
    path = tmp_path / f"netrc-{token}"
    text = f"machine 127.0.0.1 login nix password {daemon.tokens[token]}\n" if token else ""
    path.write_text(text)
    path.chmod(0o600)
    return path


def nix(tmp_path: Path, *args: str, netrc_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``nix ARGS`` with no substituter, nothing cached from an earlier call, and the given netrc."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [*NIX, *args, "--option", "substituters", ""]
    if netrc_file is not None:
        argv += ["--option", "netrc-file", str(netrc_file)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=600)


def copy_to(tmp_path: Path, daemon: Any, url: str, *paths: str, token: str | None = "pusher") -> Any:
    return nix(tmp_path, "copy", "--to", url, *paths, netrc_file=netrc(tmp_path, daemon, token))


def copy_from(tmp_path: Path, daemon: Any, *paths: str, keys: list[str] | None = None) -> tuple[Any, Path]:
    store = tmp_path / f"client-{time.monotonic_ns()}"
    keys = keys if keys is not None else public_keys(daemon)
    done = nix(
        tmp_path,
        "copy",
        "--from",
        daemon.url,
        "--to",
        str(store),
        "--option",
        "trusted-public-keys",
        " ".join(keys),
        *paths,
    )
    return done, store


def public_keys(daemon: Any) -> list[str]:
    return [k.public_key().to_text() for k in daemon.signing_keys]


def puts(daemon: Any) -> int:
    """How many NARs and narinfos the daemon has taken by PUT so far (its log says each)."""
    return sum(1 for line in daemon.log().splitlines() if "by PUT" in line or "from a narinfo PUT" in line)


async def _rows(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def rows(daemon: Any, sql: str) -> list[Any]:
    return asyncio.run(_rows(daemon.dsn, sql))


def dump(path: str, store: Path | None = None) -> bytes:
    argv = ["nix-store", *(["--store", str(store)] if store else []), "--dump", path]
    return subprocess.run(argv, capture_output=True, check=True).stdout


@pytest.mark.parametrize("compression", ["zstd", "xz", "none"])
def test_nix_copy_to_publishes_a_closure_that_nix_substitutes_and_verifies(
    start_daemon, tmp_path, request, compression
):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build")
    request.addfinalizer(lambda: delete(top, dep))
    url = f"{daemon.url}/?compression={compression}&write-nar-listing=1"

    done = copy_to(tmp_path, daemon, url, top)
    assert done.returncode == 0, done.stderr + daemon.log()[-3000:]
    published = {r["hash"]: r for r in rows(daemon, "SELECT * FROM store_paths")}
    assert set(published) == {StorePath.parse(top).hash, StorePath.parse(dep).hash}
    extension = {"zstd": ".zst", "xz": ".xz", "none": ""}[compression]
    for path in (top, dep):
        row = published[StorePath.parse(path).hash]
        info = parse_narinfo(row["narinfo"], expected_hash=row["hash"])
        assert info.compression == compression and info.url.endswith(f".nar{extension}")
        assert [s.split(":")[0] for s in info.sigs] == [daemon.signing_keys[0].name]  # signed by the server
    files = {(r["hash"], r["kind"]) for r in rows(daemon, "SELECT hash, kind FROM path_files")}
    assert files == {(StorePath.parse(p).hash, "ls") for p in (top, dep)}
    roots = {r["hash"] for r in rows(daemon, "SELECT hash FROM roots")}
    assert roots == set(published)  # every path copied is kept for the retention window

    # An empty chroot store that trusts only the server's key takes the closure, byte for byte.
    got, store = copy_from(tmp_path, daemon, top)
    assert got.returncode == 0, got.stderr
    assert dump(top, store) == dump(top) and dump(dep, store) == dump(dep)
    verify = nix(
        tmp_path, "store", "verify", "--store", daemon.url, "--option", "trusted-public-keys",
        " ".join(public_keys(daemon)), "-r", top,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    # The twin: a store that trusts another key refuses the same closure.
    other = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "key", "generate-secret", "--key-name",
         daemon.signing_keys[0].name], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    impostor = subprocess.run(
        [*NIX, "key", "convert-secret-to-public"], input=other, capture_output=True, text=True, check=True
    ).stdout
    refused, _ = copy_from(tmp_path, daemon, top, keys=[impostor])
    assert refused.returncode != 0 and "signature" in refused.stderr, refused.stderr

    # A second copy uploads nothing.
    before = puts(daemon)
    again = copy_to(tmp_path, daemon, url, top)
    assert again.returncode == 0, again.stderr
    assert puts(daemon) == before


@pytest.mark.parametrize(("token", "status"), [(None, "401"), ("reader", "403")])
def test_nix_copy_to_without_a_push_token_is_refused_and_writes_nothing(start_daemon, tmp_path, request, token, status):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=1000)
    request.addfinalizer(lambda: delete(top, dep))
    done = copy_to(tmp_path, daemon, f"{daemon.url}/?compression=zstd", top, token=token)
    assert done.returncode != 0
    assert f"HTTP error {status}" in done.stderr, done.stderr
    assert rows(daemon, "SELECT key FROM objects") == []
    assert rows(daemon, "SELECT hash FROM store_paths") == []


@pytest.mark.modern_nix
def test_modern_nix_copies_to_niks3d_and_substitutes_back(start_daemon, modern_nix, tmp_path):
    """The same with Debian 13's Nix (2.26: paths uploaded in parallel, references first)."""
    daemon = start_daemon()
    expr = tmp_path / "closure.nix"
    expr.write_text(CLOSURE.replace("@SALT@", secrets.token_hex(6)).replace("@BIG@", str(9 * 1024 * 1024)))
    built = modern_nix.nix("build", "--no-link", "--print-out-paths", "-f", str(expr)).split()
    (top,) = [p for p in built if p.endswith("-copy-top")]
    (dep,) = [p for p in built if p.endswith("-copy-dep")]
    url = f"{daemon.url}/?compression=zstd&write-nar-listing=1"
    modern_nix.nix("copy", "--to", url, top, "--option", "netrc-file", str(netrc(tmp_path, daemon, "pusher")))
    assert {r["hash"] for r in rows(daemon, "SELECT hash FROM store_paths")} == {
        StorePath.parse(p).hash for p in (top, dep)
    }
    reader = ModernNix(modern_nix.root, tmp_path / "reader", shared=[tmp_path])
    keys = " ".join(public_keys(daemon))
    reader.nix("copy", "--from", daemon.url, top, "--option", "trusted-public-keys", keys)
    reader.nix("store", "verify", "--store", daemon.url, "-r", top, "--option", "trusted-public-keys", keys)
    assert (
        reader.host_path(top).joinpath("share/blob").read_bytes()
        == modern_nix.host_path(top).joinpath("share/blob").read_bytes()
    )
    # A read token is refused, and modern Nix prints why.
    other = tmp_path / "other.nix"
    other.write_text(CLOSURE.replace("@SALT@", secrets.token_hex(6)).replace("@BIG@", "1000"))
    fresh = modern_nix.nix("build", "--no-link", "--print-out-paths", "-f", str(other)).split()
    refused = modern_nix.run(
        ["nix", "copy", "--to", url, *fresh, "--option", "netrc-file", str(netrc(tmp_path, daemon, "reader"))],
        check=False,
    )
    assert refused.returncode != 0 and b"403" in refused.stderr, refused.stderr.decode()
    assert len(rows(daemon, "SELECT hash FROM store_paths")) == 2


def test_nix_store_copy_log_uploads_a_log_that_nix_log_reads_back(start_daemon, tmp_path, request):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=1000)
    request.addfinalizer(lambda: delete(top, dep))
    url = f"{daemon.url}/?compression=zstd"
    pusher = netrc(tmp_path, daemon, "pusher")
    # The log of a derivation with no published output is refused, naming the reason.
    early = nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=pusher)
    assert early.returncode != 0 and "HTTP error 422" in early.stderr, early.stderr
    assert copy_to(tmp_path, daemon, url, top).returncode == 0
    # The proof that the log is the derivation's: its .drv, in the cache (docs/security.md, rule 3).
    drv = subprocess.run(["nix-store", "-q", "--deriver", top], capture_output=True, text=True, check=True)
    assert copy_to(tmp_path, daemon, url, "--derivation", drv.stdout.strip()).returncode == 0
    done = nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=pusher)
    assert done.returncode == 0, done.stderr
    got = nix(tmp_path, "log", "--store", daemon.url, top)
    assert got.returncode == 0, got.stderr
    assert "building the top" in got.stdout
    kinds = {(r["hash"], r["kind"]) for r in rows(daemon, "SELECT hash, kind FROM path_files")}
    assert (StorePath.parse(top).hash, "log") in kinds
    # Immutable: the same log again is fine, and a read token may not upload one.
    assert nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=pusher).returncode == 0
    reader = nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=netrc(tmp_path, daemon, "reader"))
    assert reader.returncode != 0 and "HTTP error 403" in reader.stderr, reader.stderr
