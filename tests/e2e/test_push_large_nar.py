"""A NAR far above the multipart threshold goes up in parts and comes back byte for byte through stock Nix.

The daemon runs with the production defaults for multipart uploads (64 MiB threshold, 32 MiB parts), so a NAR
of ~170 MiB is six parts, and the client with its default part memory; Nix then substitutes the path from the
bucket into a chroot store, with signatures checked, and both stores must dump the same NAR.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from tests.client.storekit import build_fresh, delete
from tests.e2e.test_push import _push, _substitute

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

THRESHOLD = 64 << 20
PART_SIZE = 32 << 20
BLOB_MIB = 160  # random, so that the compressed NAR is as large as the NAR


def _dump_digest(path: str, *store: str) -> tuple[str, int]:
    """SHA-256 and size of ``nix-store --dump PATH``, streamed (the NAR is too big to hold twice)."""
    sha = hashlib.sha256()
    size = 0
    with subprocess.Popen(["nix-store", *store, "--dump", path], stdout=subprocess.PIPE) as dump:
        assert dump.stdout is not None
        while chunk := dump.stdout.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    assert dump.returncode == 0, f"nix-store --dump {path} failed"
    return sha.hexdigest(), size


def test_a_nar_of_more_than_150_mib_round_trips_through_a_multipart_upload(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon(s3={"multipart_threshold": THRESHOLD, "multipart_part_size": PART_SIZE})
    script = (
        f"mkdir -p $out/bin $out/share/many; head -c {BLOB_MIB << 20} /dev/urandom > $out/share/blob; "
        "printf '#!/bin/sh\\\\necho big\\\\n' > $out/bin/big; chmod +x $out/bin/big; ln -s share/blob $out/link; "
        "for i in $(seq 1 500); do echo $i > $out/share/many/$i; done; "
        "head -c 50000000 /dev/zero > $out/share/zeros"  # compressible: the NAR and the file differ in size
    )
    big = build_fresh(tmp_path / "build", "large-nar", script)
    request.addfinalizer(lambda: delete(big))
    want = _dump_digest(big)
    assert want[1] >= 150 << 20

    code, doc, err = _push(daemon, tmp_path, capsys, big)
    assert code == 0, err
    (uploaded,) = doc["uploaded"]
    assert uploaded["nar_size"] == want[1]
    assert uploaded["file_size"] < want[1] - (40 << 20)  # the zeros were compressed
    parts = -(-uploaded["file_size"] // PART_SIZE)
    completed = re.findall(
        r"completed multipart upload \S+ of (?:staging/[^/]+/)?(nar/\S+) \((\d+) parts\)", daemon.log()
    )
    assert [int(n) for _, n in completed] == [parts] and parts >= 5, daemon.log()[-3000:]

    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    copied = _substitute(daemon, tmp_path, [big], keys)
    assert copied.returncode == 0, copied.stderr
    (store,) = [p for p in tmp_path.iterdir() if p.name.startswith("client-") and p.is_dir()]
    assert _dump_digest(big, "--store", str(store)) == want
    assert (store / big.lstrip("/") / "share" / "blob").stat().st_size == BLOB_MIB << 20
