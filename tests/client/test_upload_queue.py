"""The upload queue and the post-build hook, without a server: what the hook records, what it refuses, that it
never fails a build, and that concurrent hooks and a draining agent neither lose nor duplicate an entry."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from niks3d.client.hook import run_hook
from niks3d.client.hookscript import write_hook_script
from niks3d.client.queue import Queue, QueueError, default_queue_path, looks_like_store_path

HOOK = str(Path(sys.executable).parent / "niks3-hook")


@pytest.fixture(params=["python", "script"])
def hook_program(request, tmp_path_factory):
    """The hook two ways: the niks3-hook program, and the sh + sqlite3 script of ``niks3 hook-script`` with its
    queue given by ``--queue`` at run time (the script hands that case to the Python hook, as it does anything
    unusual)."""
    if request.param == "python":
        return [HOOK]
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    return "script"


A = "/nix/store/" + "a" * 32 + "-alpha"
B = "/nix/store/" + "b" * 32 + "-beta"
C = "/nix/store/" + "c" * 32 + "-gamma"
DRV = "/nix/store/" + "d" * 32 + "-alpha.drv"


def _fake(i: int) -> str:
    digits = "0123456789abcdfghijklmnpqrsvwxyz"
    return f"/nix/store/{digits[i % 32]}{digits[(i // 32) % 32]}{'z' * 30}-p{i}"


_PROGRAM: list[object] = [[HOOK]]


@pytest.fixture(autouse=True)
def _which_hook(hook_program):
    _PROGRAM[0] = hook_program


def _hook(tmp_path: Path, out_paths: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    environ.update({"OUT_PATHS": out_paths, "DRV_PATH": DRV, "HOME": str(tmp_path), **env})
    argv = [HOOK, *args]
    if _PROGRAM[0] == "script":
        queue = args[1] if args[:1] == ("--queue",) else env.get("NIKS3_QUEUE") or default_queue_path(environ)
        script = write_hook_script(tmp_path / f"hook-{secrets.token_hex(3)}.sh", queue)
        argv = [str(script)]
    return subprocess.run(argv, env=environ, capture_output=True, text=True, check=False, timeout=60)


def test_the_hook_queues_out_paths_with_the_derivation(tmp_path):
    queue = tmp_path / "q.sqlite"
    proc = _hook(tmp_path, f"{A} {B}\n", "--queue", str(queue))
    assert (proc.returncode, proc.stderr) == (0, "")
    with Queue(str(queue)) as q:
        entries = q.entries()
        expected = {(A, DRV, "hook", False), (B, DRV, "hook", False)}
        assert {(e.path, e.drv, e.source, e.failed) for e in entries} == expected
        assert q.counts() == (2, 0)
        assert sqlite3.connect(queue).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_hook_takes_the_queue_from_the_environment_and_creates_the_default_directory(tmp_path):
    proc = _hook(tmp_path, A, NIKS3_QUEUE=str(tmp_path / "env.sqlite"))
    assert proc.returncode == 0, proc.stderr
    assert [e.path for e in Queue(str(tmp_path / "env.sqlite")).entries()] == [A]
    state = tmp_path / "state"
    proc = _hook(tmp_path, A, XDG_STATE_HOME=str(state))
    assert proc.returncode == 0, proc.stderr
    if os.geteuid() != 0:
        assert [e.path for e in Queue(str(state / "niks3" / "queue.sqlite")).entries()] == [A]
    assert default_queue_path({"XDG_STATE_HOME": "relative", "HOME": "/home/x"}).endswith("/queue.sqlite")


@pytest.mark.parametrize(
    ("out_paths", "expected"),
    [
        ("garbage", "not store paths: 'garbage'"),
        ("/etc/passwd", "'/etc/passwd'"),
        ("/nix/store/../../etc/shadow", "not store paths"),
        ("/nix/store/" + "e" * 32 + "-x/../../etc", "not store paths"),
        ("/nix/store/" + "e" * 31 + "-short", "not store paths"),
        ("/nix/store/" + "E" * 32 + "-upper", "not store paths"),
        ("/nix/store/" + "e" * 32 + "-bad name", "not store paths"),
        ("/nix/store/" + "e" * 32 + "-" + "n" * 300, "not store paths"),
        ("\x00\x01\x02", "not store paths"),
        ("", "OUT_PATHS is empty or unset"),
    ],
)
def test_bad_out_paths_are_refused_with_a_message_and_the_build_goes_on(tmp_path, out_paths, expected):
    queue = tmp_path / "q.sqlite"
    proc = _hook(tmp_path, out_paths.replace("\x00", ""), "--queue", str(queue))
    assert proc.returncode == 0
    assert expected in proc.stderr
    assert not queue.exists() or Queue(str(queue)).entries() == []


def test_good_paths_next_to_garbage_are_still_queued(tmp_path):
    queue = tmp_path / "q.sqlite"
    proc = _hook(tmp_path, f"junk {A} /tmp/x", "--queue", str(queue))
    assert proc.returncode == 0
    assert "ignoring 2 word(s)" in proc.stderr
    assert [e.path for e in Queue(str(queue)).entries()] == [A]


def test_a_missing_queue_directory_is_named_and_the_build_goes_on(tmp_path):
    proc = _hook(tmp_path, A, "--queue", str(tmp_path / "nope" / "q.sqlite"))
    assert proc.returncode == 0
    assert f"the queue directory {tmp_path / 'nope'} does not exist" in proc.stderr
    assert f"NOT queued for upload: {A}" in proc.stderr
    assert not (tmp_path / "nope").exists()


def test_an_unwritable_queue_is_named_and_the_build_goes_on(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="niks3-ro-", dir="/tmp"))  # reachable by nobody, unlike tmp_path
    shared.chmod(0o755)
    queue = shared / "q.sqlite"
    Queue(str(queue)).close()
    queue.chmod(0o444)
    argv = [HOOK, "--queue", str(queue)]
    if os.geteuid() == 0:  # root writes anything: run the hook as nobody, for whom the file is read-only
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to drop root")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {"OUT_PATHS": A, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0
    assert f"NOT queued for upload: {A}" in proc.stderr
    assert "readonly" in proc.stderr or "read-only" in proc.stderr or "unable to open" in proc.stderr, proc.stderr
    assert Queue(str(queue)).entries() == []
    shutil.rmtree(shared)


def test_a_file_that_is_not_a_queue_is_named(tmp_path):
    bogus = tmp_path / "q.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    out = _hook(tmp_path, A, "--queue", str(bogus))
    assert out.returncode == 0
    assert f"cannot open the queue {bogus}" in out.stderr


def test_unexpected_arguments_do_not_fail_the_build(tmp_path, capsys):
    assert run_hook(["--bogus"], {"OUT_PATHS": A}, sys.stderr) == 0
    assert "unexpected argument '--bogus'" in capsys.readouterr().err


def test_the_cheap_check_agrees_with_the_strict_parser_on_the_usual_cases():
    from niks3d.nix.storepath import StorePath

    for text in (A, B, DRV, "/nix/store/" + "0" * 32 + "-a+b-1.0_x?=y"):
        assert looks_like_store_path(text)
        StorePath.parse(text)
    for text in ("/nix/store/" + "a" * 32 + "-.", "/nix/store/" + "a" * 32 + "-..-x", "/nix/store/" + "a" * 32):
        assert not looks_like_store_path(text)


def test_a_batch_is_claimed_again_with_the_same_paths_until_finished(tmp_path):
    with Queue(str(tmp_path / "q.sqlite")) as q:
        q.add([B, A])
        batch, paths = q.claim(10) or (0, [])
        assert paths == [A, B]
        q.add([C])  # queued while the batch is pushed: not part of it
        assert q.claim(10) == (batch, [A, B])
        assert q.finish(batch) == 2
        assert q.claim(10) == (batch + 1, [C])
        q.add([C])  # already in a batch: refreshed, not duplicated
        assert [e.path for e in q.entries()] == [C]


def test_a_failed_batch_is_retried_path_by_path_and_finally_marked_failed(tmp_path):
    with Queue(str(tmp_path / "q.sqlite")) as q:
        q.add([A, B])
        batch, _ = q.claim(10) or (0, [])
        q.release(batch, "boom", delay=0, max_attempts=2, now=0)
        q.add([C])
        assert q.claim(10, now=1)[1] == [C]  # fresh entries first
        q.finish(q.claim(10, now=1)[0])
        first = q.claim(10, now=1)
        assert first is not None and len(first[1]) == 1  # a path that failed goes alone
        q.release(first[0], "boom again", delay=100, max_attempts=2, now=1)
        (failed,) = [e for e in q.entries() if e.failed]
        assert (failed.path, failed.attempts, failed.last_error) == (first[1][0], 2, "boom again")
        assert q.counts() == (1, 1)
        assert q.claim(10, now=1)[1] != first[1]
        q.retry_failed()
        assert q.counts() == (2, 0)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "q.sqlite"
    Queue(str(path)).close()
    sqlite3.connect(path).execute("PRAGMA user_version=7")
    with pytest.raises(QueueError, match="schema version 7"):
        Queue(str(path))


def test_concurrent_hooks_and_a_draining_agent_lose_and_duplicate_nothing(tmp_path):
    """Two hook processes append 150 paths each (50 paths from both) while this process claims and finishes
    batches: every path is finished, a path queued once is finished once, and the queue ends empty."""
    queue = str(tmp_path / "q.sqlite")
    Queue(queue).close()
    first = [_fake(i) for i in range(150)]
    second = [_fake(i) for i in range(100, 250)]
    script = (
        "import sys\nfrom niks3d.client.hook import run_hook\n"
        "for p in sys.argv[2:]:\n"
        "    run_hook(['--queue', sys.argv[1]], {'OUT_PATHS': p}, sys.stderr)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, queue, *paths], stderr=subprocess.PIPE, text=True)
        for paths in (first, second)
    ]
    finished: list[str] = []
    stop = threading.Event()

    def drain() -> None:
        with Queue(queue) as q:
            while True:
                claimed = q.claim(7)
                if claimed is None:
                    if stop.is_set():
                        return
                    continue
                finished.extend(claimed[1])
                q.finish(claimed[0])

    agent = threading.Thread(target=drain)
    agent.start()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    stop.set()
    agent.join(120)
    assert errors == ["", ""]
    assert set(finished) == set(first) | set(second), "an entry was lost"
    both = set(first) & set(second)  # queued again after it was pushed: pushed again, at most once per hook
    counts = {p: finished.count(p) for p in set(finished)}
    assert {p for p, n in counts.items() if n > 1} <= both, "a path queued once was handed out twice"
    assert max(counts.values()) <= 2
    assert Queue(queue).entries() == []


def test_with_nix_2_8_0s_empty_out_paths_the_outputs_come_from_the_derivation(tmp_path):
    """Nix 2.8.0 runs the hook with OUT_PATHS empty (NixOS/nix#6446); the .drv names the outputs."""
    out = tmp_path / "out-path"
    dev = tmp_path / "dev-path"
    drv = tmp_path / "x.drv"
    drv.write_text(f'Derive([("dev","{dev}","",""),("out","{out}","","")],[],[],"x86_64-linux","/bin/sh",[],[])')
    from niks3d.client import hook

    real = [A, B]
    text = drv.read_text().replace(str(dev), real[0]).replace(str(out), real[1])
    drv.write_text(text)
    assert hook.outputs_from_drv(str(drv)) == []  # named, but not on disk: nothing was built
    store = tmp_path / "store"
    store.mkdir()
    present = str(store)  # a path that exists, to stand in for a built output
    drv.write_text(text.replace(real[0], present))
    assert hook.outputs_from_drv(str(drv)) == []  # not a store path
    drv.write_text("not a derivation")
    assert hook.outputs_from_drv(str(drv)) == []
    assert hook.outputs_from_drv(str(tmp_path / "missing.drv")) == []


def test_the_script_queues_without_python_in_the_common_case(tmp_path):
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    queue = tmp_path / "q.sqlite"
    Queue(str(queue)).close()
    script = write_hook_script(tmp_path / "hook.sh", str(queue))
    script.write_text(script.read_text().replace(sys.executable, "/nonexistent/python"))  # the slow path would fail
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OUT_PATHS": f"{A} {B}", "DRV_PATH": DRV}
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert {(e.path, e.drv) for e in Queue(str(queue)).entries()} == {(A, DRV), (B, DRV)}
    env["OUT_PATHS"] = "not-a-path"  # and the negative twin: anything unusual goes to Python, here missing
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert "/nonexistent/python" in proc.stderr
