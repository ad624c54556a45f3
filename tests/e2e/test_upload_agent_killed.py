"""`niks3 agent` killed with SIGKILL at random moments while it uploads: started again, it ends with every queued
path published, the queue empty, the bucket closure-consistent, and no upload session abandoned (the restarted
agent resumed the batch's session instead of pushing the same paths in a new one).

Each trial queues a fresh closure of nine paths (about 24 MiB, some NARs multipart) as the post-build hook would,
starts ``niks3 agent --once --batch 4`` (three batches), SIGKILLs it after a random delay between the start and
the length of a whole undisturbed run (measured first), then runs the agent again to the end. Three trials by
default; ``NIKS3_STRESS_TRIALS=N`` runs more and ``NIKS3_STRESS_SEED`` repeats a run's delays.

Nothing the server had accepted before the kill is uploaded again (checked for each path by its listing object).
Objects uploaded but not yet reported when the kill lands (the reporter sends every 2 s) are uploaded again
(docs/client.md, "Interruptions"); the failure message counts them.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from niks3d.client.queue import Queue
from testkit.nixfixtures import make_closure
from tests.client.storekit import delete
from tests.e2e.test_push import _sessions, _token_file
from tests.e2e.test_push_killed import closure_problems
from tests.server.bucketview import bucket_keys

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

TRIALS = int(os.environ.get("NIKS3_STRESS_TRIALS") or 3)
SEED = int(os.environ.get("NIKS3_STRESS_SEED") or secrets.randbits(32))
_UPLOADED = re.compile(r"uploaded (/nix/store/\S+) \(([a-z+]+)")


def _uploaded(stderr: str) -> set[tuple[str, str]]:
    return {(path, kind) for path, kinds in _UPLOADED.findall(stderr) for kind in kinds.split("+")}


async def _reported_listings(dsn: str) -> set[str]:
    """The hash parts of the paths whose listing (``<hash>.ls``) the server has accepted as present."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT key FROM objects WHERE kind = 'ls' AND state = 'present'")
        return {r["key"].removesuffix(".ls") for r in rows}
    finally:
        await conn.close()


def test_an_agent_killed_at_random_moments_publishes_everything_once_started_again(start_daemon, tmp_path, request):
    rng = random.Random(SEED)
    daemon = start_daemon()
    token = _token_file(tmp_path, daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    closures = [
        make_closure(tmp_path / f"build-{t}", secrets.token_hex(6), n_paths=9, total_bytes=24 << 20)
        for t in range(TRIALS + 1)
    ]
    request.addfinalizer(lambda: delete(*(p for c in closures for p in c)))

    def agent(queue: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "niks3d.client", "agent", "--once", "-v", "--queue", str(queue)),
            *("--batch", "4", "--uploads", "1", "-j", "1", "--server", daemon.url, "--token-file", token),
        ]

    # An undisturbed run measures how long a whole drain takes here.
    calibration = tmp_path / "calibration.sqlite"
    Queue(str(calibration)).add(closures[0])
    started = time.monotonic()
    run = subprocess.run(agent(calibration), capture_output=True, text=True, env=env, timeout=300, check=False)
    whole = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    report = [f"seed {SEED}; a whole drain took {whole:.2f} s"]

    for trial, paths in enumerate(closures[1:]):
        queue = tmp_path / f"queue-{trial}.sqlite"
        Queue(str(queue)).add(paths)
        delay = rng.uniform(0.0, whole)
        with subprocess.Popen(agent(queue), stderr=subprocess.PIPE, text=True, env=env) as child:
            time.sleep(delay)
            child.kill()
            _, killed_err = child.communicate(timeout=60)
        before = _uploaded(killed_err)
        report.append(f"trial {trial}: SIGKILL after {delay:.2f} s, {len(before)} objects uploaded by then")
        where = "\n".join(report)
        assert not closure_problems(daemon.s3), where
        acknowledged = asyncio.run(_reported_listings(daemon.dsn))

        again = subprocess.run(agent(queue), capture_output=True, text=True, env=env, timeout=300, check=False)
        assert again.returncode == 0, f"{where}\n{again.stderr}"
        assert Queue(str(queue)).entries() == [], where
        keys = bucket_keys(daemon.s3)
        assert {p for p in paths if Path(p).name[:32] + ".narinfo" not in keys} == set(), where
        assert not closure_problems(daemon.s3), where
        again_uploaded = _uploaded(again.stderr)
        redone = {path for path, _ in again_uploaded if Path(path).name[:32] in acknowledged}
        assert not redone, f"{where}\nuploaded again although the server had them: {sorted(redone)}"
        twice = {path for path, _ in before & again_uploaded}
        report[-1] += f"; {len(twice)} paths whose uploads were not yet reported were uploaded again"
        states = asyncio.run(_sessions(daemon.dsn))
        assert "open" not in states, f"{where}\na session was abandoned: {states}"
