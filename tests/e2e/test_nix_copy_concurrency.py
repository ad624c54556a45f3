"""The write path of stock Nix under concurrency (docs/api.md, stock Nix as a writer): two `nix copy --to` of
overlapping closures at once, a `niks3 push` of the same paths at the same time, and a GC run in the middle.
Every writer succeeds, the bucket stays closure-consistent, and stock Nix substitutes everything.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time

import pytest

from niks3d.nix.storepath import StorePath
from testkit.nixfixtures import build_expr, salted_expr
from tests.client.storekit import delete
from tests.e2e.gcchecks import assert_closure_consistent, bucket_state
from tests.e2e.test_gc import _niks3
from tests.e2e.test_nix_copy_to import NIX, copy_from, dump, netrc, rows

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

# the bindings of an expression of testkit/nixfixtures.py's salted_expr (its ``mk``)
OVERLAPPING = """
  shared = mk "race-shared" "mkdir $out; head -c 3000000 /dev/urandom > $out/lib";
  middle = mk "race-middle" "mkdir $out; echo ${shared} > $out/ref; head -c 200000 /dev/urandom > $out/data";
  topA = mk "race-top-a" "mkdir $out; echo ${middle} > $out/ref";
  topB = mk "race-top-b" "mkdir $out; echo ${middle} ${shared} > $out/ref";
in [ topA topB middle shared ]
"""


def test_overlapping_copies_a_push_and_gc_at_once_keep_the_cache_whole(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    top_a, top_b, middle, shared = build_expr(salted_expr(OVERLAPPING, secrets.token_hex(6)), tmp_path / "b")
    request.addfinalizer(lambda: delete(top_a, top_b, middle, shared))
    netrc_file = netrc(tmp_path, daemon, "pusher")

    def start_copy(path: str, compression: str) -> subprocess.Popen[str]:
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
        argv = [*NIX, "copy", "--to", f"{daemon.url}/?compression={compression}", path, "--option",
                "substituters", "", "--option", "netrc-file", str(netrc_file)]  # fmt: skip
        return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)

    # The same compression for both copies: they upload the very same NAR keys at the same time.
    copies = [start_copy(top_a, "zstd"), start_copy(top_b, "zstd"), start_copy(top_a, "xz")]
    gc_result: list[tuple[int, str, str]] = []
    collector = threading.Thread(
        target=lambda: gc_result.append(
            _niks3(daemon, tmp_path, capsys, "collector", "gc", "--older-than", "1d", "--json")
        )
    )
    collector.start()
    code, _out, err = _niks3(daemon, tmp_path, capsys, "pusher", "push", "--no-progress", top_a, top_b)
    collector.join()
    assert code == 0, err
    for copy in copies:
        _, stderr = copy.communicate(timeout=600)
        assert copy.returncode == 0, stderr + daemon.log()[-3000:]
    assert gc_result and gc_result[0][0] == 0, gc_result

    published = {r["hash"] for r in rows(daemon, "SELECT hash FROM store_paths")}
    assert published == {StorePath.parse(p).hash for p in (top_a, top_b, middle, shared)}
    assert_closure_consistent(bucket_state(daemon.s3))
    got, store = copy_from(tmp_path, daemon, top_a, top_b)
    assert got.returncode == 0, got.stderr
    for path in (top_a, top_b, middle, shared):
        assert dump(path, store) == dump(path), path
