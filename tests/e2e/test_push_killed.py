"""`niks3 push` killed with SIGKILL at random moments: the bucket stays closure-consistent after every kill, and
pushing again always ends with the whole closure substitutable by stock Nix, signatures checked.

Each trial pushes a fresh closure (two multipart NARs, a handful of small ones, and a dependency shared by every
trial) in a child process and SIGKILLs it after a random delay: before the session opened, in the middle of
uploads, during ``complete``, or after it finished. Then the bucket is checked (docs/design.md invariant 1), the same
push runs again to the end, the bucket is checked again, and Nix copies the closure into a fresh chroot store.

Five trials by default (well under a minute); ``NIKS3_STRESS_TRIALS=N`` runs more, ``NIKS3_STRESS_SEED`` repeats
a run's random delays, and ``NIKS3_STRESS_MAX_DELAY`` (seconds; default: as long as a whole push takes, measured
first) moves where kills land. The push run again after a kill must finish within two minutes; one that hangs
fails the test with the stacks of its threads and what the database was doing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import botocore.exceptions
import pytest

from niks3d.nix.errors import NixFormatError
from niks3d.nix.narinfo import parse_narinfo
from testkit.nixfixtures import build_expr
from tests.client.storekit import delete
from tests.e2e.test_push import _closure, _push, _sessions, _substitute, _token_file
from tests.server.bucketview import bucket_keys, s3_client

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

NARINFO = ".narinfo"
# Read at import: the autouse clean_environ fixture removes NIKS3_* variables before each test runs.
TRIALS = int(os.environ.get("NIKS3_STRESS_TRIALS") or 5)
SEED = int(os.environ.get("NIKS3_STRESS_SEED") or secrets.randbits(32))
MAX_DELAY = os.environ.get("NIKS3_STRESS_MAX_DELAY")


def _size_in_bucket(client: Any, bucket: str, key: str) -> int | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def closure_problems(s3: Any) -> list[str]:
    """Every breach of the closure invariant in the bucket: a narinfo whose NAR (with its FileSize) or whose
    references' narinfos are missing, or a narinfo that does not parse. Empty when the bucket is consistent.

    Safe while a push is still publishing: the listing is only a first guess; what it misses is looked up again
    after the narinfo that needs it was read, and publication goes references first.
    """
    client = s3_client(s3)
    keys = bucket_keys(s3)
    problems: list[str] = []

    def present(key: str) -> bool:
        return key in keys or _size_in_bucket(client, s3.bucket, key) is not None

    for key in sorted(k for k in keys if k.endswith(NARINFO) and "/" not in k):
        hash_part = key.removesuffix(NARINFO)
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        try:
            info = parse_narinfo(body, expected_hash=hash_part)
        except NixFormatError as exc:
            problems.append(f"{key} does not parse: {exc}")
            continue
        size = _size_in_bucket(client, s3.bucket, info.url)
        if size is None:
            problems.append(f"{key} names the NAR {info.url}, which is not in the bucket")
        elif info.file_size is not None and size != info.file_size:
            problems.append(f"{key} says FileSize {info.file_size}, but {info.url} has {size} bytes")
        for ref in info.references:
            ref_key = ref[:32] + NARINFO
            if ref_key != key and not present(ref_key):
                problems.append(f"{key} refers to {ref}, whose {ref_key} is not in the bucket")
    return problems


def test_the_closure_checker_finds_a_missing_nar_and_a_missing_reference(start_daemon, nix_fixtures, tmp_path, capsys):
    daemon = start_daemon()
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest)
    assert code == 0, err
    assert closure_problems(daemon.s3) == []
    client = s3_client(daemon.s3)
    dep = Path(nix_fixtures.protodep).name
    top = Path(nix_fixtures.prototest).name
    dep_info = parse_narinfo(client.get_object(Bucket=daemon.s3.bucket, Key=dep[:32] + NARINFO)["Body"].read())
    client.delete_object(Bucket=daemon.s3.bucket, Key=dep_info.url)
    assert closure_problems(daemon.s3) == [
        f"{dep[:32]}.narinfo names the NAR {dep_info.url}, which is not in the bucket"
    ]
    client.delete_object(Bucket=daemon.s3.bucket, Key=dep[:32] + NARINFO)
    assert closure_problems(daemon.s3) == [
        f"{top[:32]}.narinfo refers to {dep}, whose {dep[:32]}.narinfo is not in the bucket"
    ]


def _trial_closures(workdir: Path, trials: int) -> list[list[str]]:
    """Per trial a fresh closure (root first): two multipart NARs (20 and 10 MiB; the test daemon's threshold is
    8 MiB, its parts 5 MiB), six small ones in a chain, and a 9 MiB dependency that every trial shares."""
    run_salt = secrets.token_hex(6)
    lines = [
        "let",
        "  mk = name: salt: script: derivation { inherit name salt; system = builtins.currentSystem;",
        '    builder = "/bin/sh"; args = [ "-c" ("export PATH=/bin:/usr/bin; mkdir $out; " + script) ]; };',
        f'  shared = mk "killed-shared" "{run_salt}" "head -c 9437184 /dev/urandom > $out/blob";',
        "  trial = salt: rec {",
        '    big = mk "killed-big" salt "echo ${shared} > $out/ref; head -c 20971520 /dev/urandom > $out/blob";',
        '    mid = mk "killed-mid" salt "head -c 10485760 /dev/urandom > $out/blob";',
        '    s0 = mk "killed-s0" salt "head -c 300000 /dev/urandom > $out/blob";',
    ]
    for i in range(1, 6):
        refs = f"echo ${{s{i - 1}}} > $out/ref"
        lines.append(f'    s{i} = mk "killed-s{i}" salt "{refs}; head -c {i * 150_000} /dev/urandom > $out/b";')
    lines += [
        '    root = mk "killed-root" salt "echo ${big} ${mid} ${s5} > $out/refs";',
        "  };",
        "in builtins.concatMap (t: [ t.root t.big t.mid t.s0 t.s1 t.s2 t.s3 t.s4 t.s5 ]) [",
        *(f'  (trial "{run_salt}-{t}")' for t in range(trials)),
        "]",
    ]
    built = build_expr("\n".join(lines) + "\n", workdir)
    per_trial = len(built) // trials
    return [built[t * per_trial : (t + 1) * per_trial] for t in range(trials)]


def _phase(stderr: str) -> str:
    if "pushed " in stderr:
        return "after it finished"
    uploaded = stderr.count("\nuploaded ") + stderr.startswith("uploaded ")
    if "session " in stderr:
        return f"during uploads or complete ({uploaded} paths done)"
    return "before the session opened"


async def _database_activity(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS xact_age, left(query, 200) AS q "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return "\n".join(str(dict(r)) for r in rows)
    finally:
        await conn.close()


def _push_again(argv: list[str], env: dict[str, str], dsn: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Run the push to its end in a child process. One that hangs is stopped with SIGABRT, so that Python's
    faulthandler prints where every thread of it waited, and what the database was doing is added."""
    python, *rest = argv
    with subprocess.Popen(
        [python, "-X", "faulthandler", *rest, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            activity = asyncio.run(_database_activity(dsn))
            child.send_signal(signal.SIGABRT)
            out, err = child.communicate(timeout=60)
            return -1, {}, f"hung for {timeout:.0f} s:\n{err.decode(errors='replace')}\ndatabase:\n{activity}"
    text = err.decode(errors="replace")
    return child.returncode, json.loads(out) if child.returncode == 0 else {}, text


def test_a_push_killed_at_random_moments_leaves_a_consistent_bucket_and_completes_when_run_again(
    start_daemon, tmp_path, request
):
    trials, seed = TRIALS, SEED
    rng = random.Random(seed)
    warm_up, calibration, *closures = _trial_closures(tmp_path / "build", trials + 2)
    request.addfinalizer(lambda: delete(*warm_up, *calibration, *(p for c in closures for p in c)))
    daemon = start_daemon()
    token = _token_file(tmp_path, daemon)
    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}

    def argv(root: str) -> list[str]:
        push = ["push", root, "--server", daemon.url, "--token-file", token, "--no-progress"]
        return [sys.executable, "-m", "niks3d.client", *push]

    # A first push uploads the shared dependency, so that every later one finds it cached. The next, of the same
    # shape as the trials and not killed, measures when the session opens and how long a whole push takes here;
    # kills then land from before the session opens to the end of the push, most while it uploads and completes.
    subprocess.run(argv(warm_up[0]), capture_output=True, env=env, check=True)
    started = time.monotonic()
    opened = 0.0
    with subprocess.Popen(argv(calibration[0]), stderr=subprocess.PIPE, text=True, env=env) as child:
        assert child.stderr is not None
        for line in child.stderr:
            if "session" in line and not opened:
                opened = time.monotonic() - started
        assert child.wait(120) == 0
    whole = time.monotonic() - started
    low = 0.5 * opened
    high = float(MAX_DELAY or whole)
    report = [f"seed {seed}; the session opened after {opened:.2f} s, the push took {whole:.2f} s"]

    for trial, paths in enumerate(closures):
        root = paths[0]
        assert len(_closure(root)) == len(paths) + 1  # and the shared dependency
        delay = rng.uniform(low, high)
        with subprocess.Popen(argv(root), stderr=subprocess.PIPE, text=True, env=env) as child:
            time.sleep(delay)
            child.kill()
            _, stderr = child.communicate(timeout=60)
        report.append(f"trial {trial}: SIGKILL after {delay:.2f} s, {_phase(stderr)}")
        where = f"seed {seed}, {report[-1]}"  # NIKS3_STRESS_SEED repeats the delays
        problems = closure_problems(daemon.s3)
        assert not problems, f"{where}\n{stderr}\n" + "\n".join(problems)

        code, doc, err = _push_again(argv(root), env, daemon.dsn)
        assert code == 0, f"{where}\n{err}"
        closure = _closure(root)
        assert set(doc["published"]) | set(doc["cached"]) | set(doc["already_uploaded"]) == closure, where
        problems = closure_problems(daemon.s3)
        assert not problems, f"{where}\n" + "\n".join(problems)
        in_bucket = {k.removesuffix(NARINFO) for k in bucket_keys(daemon.s3) if k.endswith(NARINFO)}
        assert {Path(p).name[:32] for p in closure} <= in_bucket, where
        copied = _substitute(daemon, tmp_path, [root], keys)
        assert copied.returncode == 0, f"{where}\n{copied.stderr}"

    sessions = asyncio.run(_sessions(daemon.dsn))
    # Every killed push was resumed and completed, none left open (a push killed after it finished and run
    # again is a new session that completes at once).
    assert len(sessions) >= trials and set(sessions) == {"completed"}, "\n".join(report)
    print("\n".join(report))
