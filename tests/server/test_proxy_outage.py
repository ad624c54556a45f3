"""S3 goes away: a NAR cut off mid-body is never a complete-looking answer, and everything that needs S3
afterwards is a 503 with Retry-After (no truncated body), while narinfos are still answered from PostgreSQL."""

from __future__ import annotations

import http.client
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from niks3d.devenv.seaweedfs import SeaweedServer
from tests.fixtures.own import OWN_BUCKET
from tests.server.proxykit import fetch, make_path, push
from tests.server.test_proxy import _nar_key

BIG = 48 << 20  # far more than the socket buffers between S3, the proxy and the client


def _secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


async def test_an_s3_outage_gives_503_and_never_a_truncated_200(
    own_s3: SeaweedServer, make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    s3 = {
        "bucket": OWN_BUCKET,
        "endpoint_url": own_s3.endpoint_url,
        "access_key_id_file": _secret(tmp_path / "own-id", own_s3.access_key_id),
        "secret_access_key_file": _secret(tmp_path / "own-secret", own_s3.secret_access_key),
        "max_attempts": 1,
    }
    daemon = start_daemon(make_daemon_config(s3=s3))
    rng = random.Random(41)
    big = make_path(tmp_path, rng, "big", size=BIG, incompressible=True)
    small = make_path(tmp_path, rng, "small", log=True)
    await push(daemon, [big, small])
    big_key, small_key = _nar_key(daemon, big), _nar_key(daemon, small)
    log_target = "/log/" + (small.deriver or "").split("/")[-1]
    assert fetch(daemon.url, log_target).status == 200

    # Start a download, read a little, then kill S3 under it.
    conn = http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=60)
    conn.request("GET", f"/{big_key}")
    response = conn.getresponse()
    assert response.status == 200
    announced = int(response.getheader("Content-Length") or 0)
    received = len(response.read(1 << 20))
    os.kill(own_s3.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    received += len(cut.value.partial)
    conn.close()
    assert received < announced
    assert time.monotonic() - started < 30

    # S3 is gone: a 503 with Retry-After before any byte of the object, for NARs, HEADs and logs alike.
    for target, method in ((f"/{small_key}", "GET"), (f"/{small_key}", "HEAD"), (log_target, "GET")):
        reply = fetch(daemon.url, target, method=method)
        assert reply.status == 503, (target, method)
        assert int(reply.header("Retry-After") or 0) >= 1
        assert b"nix-archive" not in reply.body and (small.log or b"-") not in reply.body
    ranged = fetch(daemon.url, f"/{small_key}", headers={"Range": "bytes=0-10"})
    assert ranged.status == 503
    # Narinfos do not need S3.
    assert fetch(daemon.url, f"/{small.hash}.narinfo").status == 200
    assert fetch(daemon.url, "/nix-cache-info").status == 200
