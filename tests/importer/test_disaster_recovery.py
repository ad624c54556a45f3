"""Disaster recovery: push several closures with ``niks3 push``, lose the database, create an empty one and run
``niks3d import``: the published set, references, per-path files and objects are what they were (table contents
compared), ``niks3d fsck`` passes, and pushing the same closures again uploads nothing. A closure of
content-addressed derivations (built in a chroot store with ``ca-derivations``) is pushed too, so the import's
reading of ``realisations/*.doi`` and ``build-trace-v2/*/*.doi`` is compared with what the push recorded."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from niks3d.client.main import main
from testkit.nixfixtures import build_ca_closure
from tests.importer.importkit import niks3d, snapshot

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]


def _ca_closure(tmp_path: Path) -> tuple[Path, str] | None:
    """A CA derivation's output (and its CA dependency) built into a chroot store; None where Nix cannot."""
    root = tmp_path / "ca-store"
    build = build_ca_closure(tmp_path, root, "import-")
    if build.returncode != 0:
        assert not os.environ.get("NIKS3_REQUIRE_SERVICES"), build.stderr[-500:]
        return None
    return root, build.stdout.strip()


def _push(daemon, tmp_path: Path, capsys, *paths: str) -> dict:
    token = tmp_path / "push-token"
    token.write_text(daemon.tokens["pusher"] + "\n")
    token.chmod(0o600)
    code = main(["push", "--no-progress", "--json", *paths, "--server", daemon.url, "--token-file", str(token)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_the_database_is_rebuilt_from_the_bucket(start_daemon, nix_fixtures, postgres_server, tmp_path, capsys):
    daemon = start_daemon()
    roots = [nix_fixtures.prototest, nix_fixtures.tricky, *nix_fixtures.graph.paths(), nix_fixtures.with_log]
    first = _push(daemon, tmp_path, capsys, *roots)
    assert first["uploaded"], first
    ca = _ca_closure(tmp_path)
    if ca is not None:
        assert _push(daemon, tmp_path, capsys, "--store", str(ca[0]), ca[1])["published"]
    before = asyncio.run(snapshot(daemon.dsn))
    assert any(kind == "log" for _, _, kind in before["path_files"]), before["path_files"]
    realisations = [key for _, key, kind in before["path_files"] if kind == "realisation"]
    assert ca is None or len(realisations) >= 2, before["path_files"]
    # Both layouts: the import must read Nix 2.35's build-trace-v2 bodies too.
    assert ca is None or any(k.startswith("build-trace-v2/") for k in realisations), realisations
    daemon.stop()

    name = daemon.dsn.rsplit("/", 1)[1].split("?")[0]
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    code, report, out = niks3d(daemon.config_path, "import")
    assert code == 0 and report is not None and report["problems"] == [], out
    assert report["counts"]["paths_registered"] == len(before["store_paths"])
    after = asyncio.run(snapshot(daemon.dsn))
    for table in before:
        assert after[table] == before[table], (table, before[table] ^ after[table])
    code, fsck, out = niks3d(daemon.config_path, "fsck")
    assert code == 0 and fsck is not None and fsck["problems"] == [], out

    start_daemon(daemon)
    again = _push(daemon, tmp_path, capsys, *roots)
    # The import cannot know which logs were proven, nor who published the paths: the first push with the .drv
    # files proves the logs again, uploading those and nothing else (docs/security.md, rule 3).
    assert again["published"] == [] and again["bytes_sent"] < 100_000, again
    assert again["uploaded"] and all(u["objects"] == ["log"] for u in again["uploaded"]), again
    assert _push(daemon, tmp_path, capsys, *roots)["uploaded"] == []
    assert asyncio.run(snapshot(daemon.dsn)) == before
