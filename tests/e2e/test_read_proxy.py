"""The read proxy end to end with the real Nix 2.8: `nix copy --from http://<niks3d>` into empty chroot stores
with signatures checked (configured from the landing page's own snippets), `nix log` and `nix store verify`
through the proxy, and a private cache that Nix reads with a netrc file and that refuses Nix without one."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from niks3d.client.main import main
from niks3d.nix.signing import SecretKey
from tests.server.landing_parse import snippet_settings

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]
NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _push(daemon: Any, tmp_path: Path, *paths: str) -> None:
    token = tmp_path / "push-token"
    token.write_text(daemon.tokens["pusher"] + "\n")
    token.chmod(0o600)
    assert main(["push", "--no-progress", *paths, "--server", daemon.url, "--token-file", str(token)]) == 0


def _nix(tmp_path: Path, *args: str, options: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A nix command with a fresh disk cache, no other substituter, and ``options``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [*NIX, *args, "--option", "substituters", ""]
    for name, value in options.items():
        argv += ["--option", name, value]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)


def _copy(
    tmp_path: Path, url: str, paths: list[str], options: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    store = tmp_path / f"client-{time.monotonic_ns()}"
    return _nix(tmp_path, "copy", "--from", url, "--to", str(store), *paths, options=options), store


def _in_store(store: Path, path: str) -> bool:
    return (store / path.lstrip("/")).exists()


def test_nix_substitutes_reads_logs_and_verifies_through_the_public_proxy(start_daemon, nix_fixtures, tmp_path):
    daemon = start_daemon()
    roots = [
        nix_fixtures.prototest,
        nix_fixtures.tricky,
        nix_fixtures.odd_names,
        nix_fixtures.large,
        nix_fixtures.with_log,
    ]
    _push(daemon, tmp_path, *roots)
    url, keys = snippet_settings(daemon.url)
    assert url == daemon.url and keys == [k.public_key().to_text() for k in daemon.signing_keys]
    trusted = {"trusted-public-keys": " ".join(keys)}

    copied, store = _copy(tmp_path, url, roots, trusted)
    assert copied.returncode == 0, copied.stderr
    assert all(_in_store(store, p) for p in [*roots, nix_fixtures.protodep])
    impostor = SecretKey.generate(daemon.signing_keys[0].name).public_key().to_text()  # same name, other key
    refused, store = _copy(tmp_path, url, [nix_fixtures.protodep], {"trusted-public-keys": impostor})
    assert refused.returncode != 0 and "lacks a valid signature" in refused.stderr
    assert not _in_store(store, nix_fixtures.protodep)

    logged = _nix(tmp_path, "log", "--store", url, nix_fixtures.with_log, options=trusted)
    assert logged.returncode == 0, logged.stderr
    want = subprocess.run(["nix-store", "--read-log", nix_fixtures.with_log_drv], check=True, capture_output=True)
    assert logged.stdout.encode() == want.stdout
    assert "fixture stderr line 3" in logged.stdout

    verified = _nix(tmp_path, "store", "verify", "--store", url, "-r", nix_fixtures.prototest, options=trusted)
    assert verified.returncode == 0, verified.stderr
    untrusted = _nix(
        tmp_path,
        "store",
        "verify",
        "--store",
        url,
        "-r",
        nix_fixtures.prototest,
        options={"trusted-public-keys": impostor},
    )
    assert untrusted.returncode == 2, untrusted.stderr  # 2: untrusted (docs/protocol.md 5.5)


@pytest.mark.parametrize("nar_mode", ["stream", "redirect"])
def test_a_private_cache_is_read_with_a_netrc_and_refuses_nix_without_one(
    start_daemon, nix_fixtures, tmp_path, nar_mode
):
    daemon = start_daemon(server={"read_proxy": "private", "nar_mode": nar_mode})
    _push(daemon, tmp_path, nix_fixtures.prototest, nix_fixtures.graph.top)
    url, keys = snippet_settings(daemon.url)
    options = {"trusted-public-keys": " ".join(keys)}
    host = re.sub(r"^http://([^:/]+).*$", r"\1", url)

    refused, store = _copy(tmp_path, url, [nix_fixtures.prototest], {**options, "netrc-file": "/nonexistent"})
    assert refused.returncode != 0
    assert not _in_store(store, nix_fixtures.prototest) and not _in_store(store, nix_fixtures.protodep)
    wrong = tmp_path / "netrc-wrong"
    wrong.write_text(f"machine {host}\npassword {daemon.tokens['pusher']}\n")  # a token without the read scope
    refused, store = _copy(tmp_path, url, [nix_fixtures.prototest], {**options, "netrc-file": str(wrong)})
    assert refused.returncode != 0 and not _in_store(store, nix_fixtures.prototest)

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host}\npassword {daemon.tokens['reader']}\n")  # as the landing page shows it
    netrc.chmod(0o600)
    paths = [nix_fixtures.prototest, nix_fixtures.graph.top]
    copied, store = _copy(tmp_path, url, paths, {**options, "netrc-file": str(netrc)})
    assert copied.returncode == 0, copied.stderr
    assert all(_in_store(store, p) for p in [*paths, *nix_fixtures.graph.paths(), nix_fixtures.protodep])
