"""`niks3 push` finishes paths one by one: a path's NAR, listing and log go up together, so a push interrupted
half-way has whole paths done (and reported) rather than every NAR but no log, and "uploaded" lines (or the
status line) track the real progress."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys

import pytest

from testkit.nixfixtures import build_expr
from tests.client.storekit import delete
from tests.e2e.test_push import _token_file
from tests.server.bucketview import bucket_keys

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]
N_PATHS = 12


def _paths_with_logs(workdir) -> list[str]:
    salt = secrets.token_hex(6)
    members = " ".join(
        f'(derivation {{ name = "progress-{i}"; salt = "{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; echo building {i}; '
        f'head -c 2097152 /dev/urandom > $out" ]; }})'
        for i in range(N_PATHS)
    )
    return build_expr(f"[ {members} ]\n", workdir)


def test_the_first_path_is_done_long_before_the_last_nar_is_uploaded(start_daemon, tmp_path, request):
    daemon = start_daemon()
    paths = _paths_with_logs(tmp_path / "build")
    request.addfinalizer(lambda: delete(*paths))
    argv = [sys.executable, "-m", "niks3d.client", "push", *paths, "--server", daemon.url]
    argv += ["--token-file", _token_file(tmp_path, daemon), "--no-progress", "-j", "1", "--uploads", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as push:
        assert push.stderr is not None
        lines = []
        for line in push.stderr:
            lines.append(line)
            if line.startswith("uploaded "):
                push.send_signal(signal.SIGINT)
                break
        lines += push.stderr.readlines()
        assert push.wait(60) == 130, "".join(lines)
    first = next(line for line in lines if line.startswith("uploaded "))
    # all of the path's objects (no listing: niks3d writes it itself, 68a8796)
    assert re.match(r"uploaded /nix/store/\S+ \(nar\+log;", first), first
    keys = bucket_keys(daemon.s3)
    nars = [k for k in keys if k.startswith("nar/")]
    logs = [k for k in keys if k.startswith("log/")]
    # One path at a time is compressed and one object at a time is sent (-j 1 --uploads 1): when the first path
    # is done, at most the next two have their NAR up, far from all twelve.
    assert 1 <= len(nars) <= 3, sorted(keys)
    assert logs, sorted(keys)
