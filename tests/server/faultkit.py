"""What the fault tests share: short timeouts for the daemon, freezing a process (SIGSTOP/SIGCONT), one request
bounded by the client's own timeout, and what a 503 must carry.

A frozen dependency must show up within :data:`CLIENT_TIMEOUT`: the daemon runs with the short limits below, so a
request that hangs fails the test with a socket timeout, not with a timing comparison.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_TIMEOUT",
    "FAST",
    "FAST_S3",
    "assert_unavailable",
    "frozen",
    "request",
    "s3_section",
    "signal_all",
    "wait_ready",
]

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from niks3d.devenv.seaweedfs import SeaweedServer

# Short limits, so that a frozen dependency shows up within CLIENT_TIMEOUT.
FAST = {
    "server": {"idle_timeout": 1.0, "body_timeout": 1.0},
    "database": {"acquire_timeout": 1.0, "statement_timeout": 1.0, "connect_timeout": 1.0},
}
FAST_S3 = {"connect_timeout": 1.0, "read_timeout": 2.0, "request_timeout": 5.0, "max_attempts": 2}
# Longer than any bounded wait above (a statement's client deadline is statement_timeout + 5 s, db/pool.py), far
# shorter than a hang.
CLIENT_TIMEOUT = 15


def _secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def s3_section(s3: SeaweedServer, bucket: str, tmp_path: Path) -> dict[str, Any]:
    """The ``[s3]`` section of a daemon on a SeaweedFS of the test's own, with the short timeouts."""
    return {
        "bucket": bucket,
        "endpoint_url": s3.endpoint_url,
        "access_key_id_file": _secret(tmp_path / "own-id", s3.access_key_id),
        "secret_access_key_file": _secret(tmp_path / "own-secret", s3.secret_access_key),
        **FAST_S3,
    }


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def frozen(pids: Callable[[], list[int]]) -> Iterator[None]:
    """SIGSTOP the processes ``pids()`` names for the block, SIGCONT them after it (also when it fails)."""
    signal_all(pids(), signal.SIGSTOP)
    try:
        yield
    finally:
        signal_all(pids(), signal.SIGCONT)


def request(
    url: str, *, method: str = "GET", body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with a client timeout; a hang raises TimeoutError and fails the test."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_unavailable(answer: tuple[int, dict[str, str], bytes], what: str) -> None:
    status, headers, body = answer
    assert status == 503, (what, status, body[:300])
    assert int(headers.get("Retry-After", "0")) >= 1, (what, headers)
    assert b"Traceback" not in body


async def wait_ready(url: str, timeout: float = 30) -> None:  # noqa: ASYNC109 - a deadline for the test
    """Wait until ``/ready`` answers 200 again (after SIGCONT); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (await asyncio.to_thread(request, f"{url}/ready"))[0] != 200:
        assert time.monotonic() < deadline, "never ready again after SIGCONT"
        await asyncio.sleep(0.2)
