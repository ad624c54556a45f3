"""Attack 3 through stock Nix's write path (``PUT log/<drv>``, what ``nix store copy-log --to`` sends): a writer
plants a build log for the victim's derivation, whose outputs the victim published with ``nix copy --to``
(docs/security.md, rule 3). Then the victim's genuine log goes in, ``nix log`` prints it, and ``nix copy --from``
of the closure succeeds with signatures checked."""

from __future__ import annotations

import subprocess

import pytest

from tests.client.storekit import delete
from tests.e2e.test_nix_copy_to import build_closure, copy_from, copy_to, netrc, nix
from tests.security.kit import put_log

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]


def test_a_build_log_put_by_stock_nix_needs_the_drv_and_the_outputs_publisher(start_daemon, tmp_path, request):
    daemon = start_daemon()
    top, dep = build_closure(tmp_path / "build", big=1000)
    request.addfinalizer(lambda: delete(top, dep))
    drv = subprocess.run(["nix-store", "-q", "--deriver", top], capture_output=True, text=True, check=True)
    drv_path = drv.stdout.strip()
    url = f"{daemon.url}/?compression=zstd"
    assert copy_to(tmp_path, daemon, url, top).returncode == 0  # the victim publishes its outputs

    # With the victim's own token, and no proof: the .drv is not in the cache.
    status, text = put_log(daemon, "pusher", drv_path, b"EVIL LOG\n")
    assert status == 422 and "its .drv is not in this cache" in text, (status, text)
    # Another token copies the genuine .drv to the cache (anyone may have it) and plants its log.
    assert copy_to(tmp_path, daemon, url, "--derivation", drv_path, token="intruder").returncode == 0
    status, text = put_log(daemon, "intruder", drv_path, b"EVIL LOG\n")
    assert status == 422 and "another identity" in text, (status, text)

    done = nix(tmp_path, "store", "copy-log", "--to", url, top, netrc_file=netrc(tmp_path, daemon, "pusher"))
    assert done.returncode == 0, done.stderr
    got = nix(tmp_path, "log", "--store", daemon.url, top)
    assert got.returncode == 0 and "building the top" in got.stdout and "EVIL" not in got.stdout, got
    copied, _ = copy_from(tmp_path, daemon, top)
    assert copied.returncode == 0, copied.stderr
