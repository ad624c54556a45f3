"""A bucket with planted damage: every item is reported by kind and key; ``--quarantine`` moves the broken
narinfos out of Nix's sight (referrers first) and hands the orphans to GC, after which ``niks3d fsck`` exits 0.
Then ``niks3d fsck`` itself: damage planted in a consistent cache is found by kind, ``--repair`` fixes what is
always safe, and what is not (a lost NAR) keeps the exit code at 2."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from niks3d.nix import nix32
from testkit.nixfixtures import build_expr, salted_expr
from tests.client.storekit import delete
from tests.e2e.gcchecks import assert_closure_consistent
from tests.fixtures.daemon import niks3d_argv
from tests.importer.importkit import cache_state, niks3d, nix_copy_to_file, old_cache_key, upload_directory
from tests.server.bucketview import s3_client

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

# the bindings of an expression of testkit/nixfixtures.py's salted_expr (its ``mk``)
PATHS = """\
  lostNar = mk "dmg-lost-nar" "mkdir $out; echo 1 $salt > $out/d";
  lostInfo = mk "dmg-lost-narinfo" "mkdir $out; echo 2 $salt > $out/d";
  aboveLostInfo = mk "dmg-above-lost-narinfo" "mkdir $out; echo ${lostInfo} > $out/r";
  aboveLostNar = mk "dmg-above-lost-nar" "mkdir $out; echo ${lostNar} > $out/r";
  aboveAbove = mk "dmg-above-above" "mkdir $out; echo ${aboveLostNar} > $out/r";
  good = mk "dmg-good" "mkdir $out; echo 4 $salt > $out/d";
  goodTop = mk "dmg-good-top" "mkdir $out; echo ${good} > $out/r";
in [ lostNar lostInfo aboveLostInfo aboveLostNar aboveAbove good goodTop ]
"""


def _random_hash() -> str:
    return nix32.encode(secrets.token_bytes(20))


def _kinds(report: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in report["problems"]:
        out.setdefault(p["kind"], set()).add(p["key"])
    return out


def test_planted_damage_is_reported_by_kind_and_quarantined_then_fsck_passes(start_daemon, tmp_path, request):
    built = build_expr(salted_expr(PATHS, secrets.token_hex(6)), tmp_path)
    request.addfinalizer(lambda: delete(*built))
    lost_nar, lost_info, above_info, above_nar, above_above, good, good_top = (Path(p).name[:32] for p in built)
    _, key_file = old_cache_key(tmp_path)
    written = tmp_path / "file-cache"
    nix_copy_to_file(written, built, key_file, "xz")
    daemon = start_daemon()
    upload_directory(daemon.s3, written)
    client, bucket = s3_client(daemon.s3), daemon.s3.bucket
    state = cache_state(daemon.s3)
    client.delete_object(Bucket=bucket, Key=state.narinfos[lost_nar].url)
    client.delete_object(Bucket=bucket, Key=f"{lost_info}.narinfo")
    garbage, wrong, orphan = _random_hash(), _random_hash(), f"nar/{nix32.encode(secrets.token_bytes(32))}.nar.xz"
    client.put_object(Bucket=bucket, Key=f"{garbage}.narinfo", Body=b"StorePath: not a narinfo\n")
    good_body = client.get_object(Bucket=bucket, Key=f"{good}.narinfo")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"{wrong}.narinfo", Body=good_body)
    client.put_object(Bucket=bucket, Key=orphan, Body=b"not even xz")

    code, report, out = niks3d(daemon.config_path, "import")
    assert code == 2 and report is not None, out
    kinds = _kinds(report)
    assert kinds["nar_missing"] == {f"{lost_nar}.narinfo"}
    assert kinds["reference_missing"] == {f"{h}.narinfo" for h in (above_info, above_nar, above_above)}
    assert kinds["unparsable"] == {f"{garbage}.narinfo"}
    assert kinds["wrong_key"] == {f"{wrong}.narinfo"}
    assert orphan in kinds["orphan"] and state.narinfos[lost_info].url in kinds["orphan"]
    assert set(kinds) == {"nar_missing", "reference_missing", "unparsable", "wrong_key", "orphan"}, kinds
    assert report["counts"]["paths_registered"] == 2

    code, _, out = niks3d(daemon.config_path, "fsck")
    assert code == 2, out  # the broken narinfos and orphans are still in the bucket, untracked

    code, report, out = niks3d(daemon.config_path, "import", "--quarantine")
    assert code == 0 and report is not None, out
    assert report["counts"]["quarantined"] == 6, report["counts"]
    after = cache_state(daemon.s3)
    assert set(after.narinfos) == {good, good_top}
    assert_closure_consistent(after)
    moved = {k for k in after.sizes if k.startswith("quarantine/")}
    assert moved == {f"quarantine/{h}.narinfo" for h in (lost_nar, above_info, above_nar, above_above, garbage, wrong)}
    code, fsck, out = niks3d(daemon.config_path, "fsck")
    assert code == 0 and fsck is not None and fsck["problems"] == [], out

    gc = subprocess.run(niks3d_argv("gc", "--config", str(daemon.config_path), "--force"), capture_output=True)
    assert gc.returncode == 0, gc.stderr
    assert orphan not in cache_state(daemon.s3).sizes
    code, _, out = niks3d(daemon.config_path, "fsck")
    assert code == 0, out

    # fsck on a consistent cache with planted damage
    client.delete_object(Bucket=bucket, Key=f"{good_top}.narinfo")
    client.put_object(Bucket=bucket, Key=f"{good}.narinfo", Body=good_body + b"Extra: field\n")
    client.delete_object(Bucket=bucket, Key=f"{good}.ls")
    untracked = f"nar/{nix32.encode(secrets.token_bytes(32))}.nar.zst"
    client.put_object(Bucket=bucket, Key=untracked, Body=b"x")
    code, fsck, out = niks3d(daemon.config_path, "fsck")
    assert code == 2 and fsck is not None, out
    assert _kinds(fsck) == {
        "narinfo_missing": {f"{good_top}.narinfo"},
        "narinfo_differs": {f"{good}.narinfo"},
        "file_missing": {f"{good}.ls"},
        "untracked": {untracked},
    }, fsck
    code, _, out = niks3d(daemon.config_path, "fsck", "--repair")
    assert code == 0, out
    code, fsck, out = niks3d(daemon.config_path, "fsck")
    assert code == 0 and fsck is not None and fsck["problems"] == [], out
    assert_closure_consistent(cache_state(daemon.s3))

    client.delete_object(Bucket=bucket, Key=after.narinfos[good].url)
    code, _, out = niks3d(daemon.config_path, "fsck", "--repair")
    assert code == 2 and "nar_missing" in out, out
