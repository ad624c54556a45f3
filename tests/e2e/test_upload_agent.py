"""Upload as you build, end to end: Nix 2.8 runs ``niks3-hook`` as its post-build hook, ``niks3 agent`` publishes
what was queued, and stock Nix substitutes it from the bucket with signatures checked. Also: paths
garbage-collected while queued, a refused token, the server down for a while, the store scan, and
``niks3 build`` with a failing derivation."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from niks3d.client.main import main
from niks3d.client.queue import Queue
from testkit.nixfixtures import NO_SUBSTITUTERS, build_expr
from tests.client.storekit import corrupt, delete
from tests.e2e.test_push import _sessions, _substitute, _token_file
from tests.e2e.test_push_killed import closure_problems
from tests.server.bucketview import bucket_keys

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]

HOOK = str(Path(sys.executable).parent / "niks3-hook")
NIKS3 = [sys.executable, "-m", "niks3d.client"]


def graph_expr(salt: str, *, failing: bool = False) -> str:
    """Five derivations (two leaves, a middle one needing both, a top, a lone one), and optionally one that fails
    and a top that needs it."""
    lines = [
        "let",
        "  mk = name: script: derivation { inherit name; salt = " + json.dumps(salt) + ";",
        '    system = builtins.currentSystem; builder = "/bin/sh";',
        '    args = [ "-c" ("export PATH=/bin:/usr/bin; mkdir $out; " + script) ]; };',
        "in rec {",
        '  leaf1 = mk "up-leaf1" "echo one > $out/f";',
        '  leaf2 = mk "up-leaf2" "head -c 70000 /dev/urandom > $out/blob";',
        '  mid = mk "up-mid" "echo ${leaf1} ${leaf2} > $out/refs";',
        '  top = mk "up-top" "echo ${mid} > $out/refs";',
        '  lone = mk "up-lone" "echo lone > $out/f";',
    ]
    if failing:
        lines += [
            '  broken = mk "up-broken" "echo ${leaf1} > $out/refs; echo this build fails >&2; exit 3";',
            '  above = mk "up-above" "echo ${broken} > $out/refs";',
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    env.update(extra)
    return env


def _nix_build_with_hook(
    expr_file: Path, queue: Path, *attrs: str, hook: str = HOOK
) -> subprocess.CompletedProcess[str]:
    argv = ["nix-build", str(expr_file), "--no-out-link", *NO_SUBSTITUTERS, "--option", "post-build-hook", hook]
    for attr in attrs:
        argv += ["-A", attr]
    return subprocess.run(
        argv, env=_env(NIKS3_QUEUE=str(queue)), capture_output=True, text=True, check=False, timeout=600
    )


def _agent(daemon: Any, tmp_path: Path, capsys: Any, *args: str, token: str = "pusher") -> tuple[int, dict, str]:
    argv = ["agent", "--json", "--server", daemon.url, "--token-file", _token_file(tmp_path, daemon, token), *args]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def _keys(daemon: Any) -> list[str]:
    return [k.public_key().to_text() for k in daemon.signing_keys]


def _published(daemon: Any, paths: list[str]) -> set[str]:
    keys = bucket_keys(daemon.s3)
    return {p for p in paths if Path(p).name[:32] + ".narinfo" in keys}


@pytest.fixture
def graph(tmp_path, request):
    """A fresh graph's expression file; the built outputs are deleted from the store afterwards."""
    salt = secrets.token_hex(6)
    expr = tmp_path / "graph.nix"
    expr.write_text(graph_expr(salt, failing="failing" in request.node.name))
    yield expr
    out = subprocess.run(
        ["nix-instantiate", str(expr)], capture_output=True, text=True, check=False, env=_env()
    ).stdout.split()
    outputs = subprocess.run(
        ["nix-store", "--query", "--outputs", *out], capture_output=True, text=True, check=False
    ).stdout.split()
    delete(*[p for p in outputs if Path(p).exists()])


@pytest.mark.parametrize("hook", ["niks3-hook", "hook-script"])
def test_the_hook_fills_the_queue_and_the_agent_publishes_every_built_path(start_daemon, graph, tmp_path, capsys, hook):
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    program = HOOK
    if hook == "hook-script":  # the fast script, with its Python fallback made to fail: the fast path must do it all
        assert main(["hook-script", "--queue", str(queue), "--output", str(tmp_path / "hook.sh")]) == 0
        script = tmp_path / "hook.sh"
        script.write_text(script.read_text().replace(sys.executable, "/nonexistent/python"))
        Queue(str(queue)).close()
        program = str(script)
    build = _nix_build_with_hook(graph, queue, hook=program)
    assert build.returncode == 0, build.stderr
    assert "nonexistent" not in build.stderr, build.stderr
    built = sorted(build.stdout.split())
    assert len(built) == 5
    with Queue(str(queue)) as q:
        queued = {e.path: e for e in q.entries()}
    assert set(queued) == set(built), "every built output is queued, nothing else"
    assert all(e.drv and e.drv.endswith(".drv") and e.source == "hook" for e in queued.values())
    assert _published(daemon, built) == set()

    code, doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once")
    assert code == 0, err
    assert doc["published"] == 5 and doc["waiting"] == 0 and doc["failed"] == 0, doc
    assert Queue(str(queue)).entries() == []
    assert _published(daemon, built) == set(built)
    assert closure_problems(daemon.s3) == []
    copied = _substitute(daemon, tmp_path, built, _keys(daemon))
    assert copied.returncode == 0, copied.stderr
    # the negative twin: a client that trusts another key refuses the same paths
    impostor = "test-cache-1:" + "A" * 43 + "="
    refused = _substitute(daemon, tmp_path, built[:1], [impostor])
    assert refused.returncode != 0

    code, doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once")
    assert (code, doc["published"]) == (0, 0), err  # an empty queue: nothing to do


def test_paths_garbage_collected_while_queued_are_dropped_with_a_message(start_daemon, graph, tmp_path, capsys):
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    build = _nix_build_with_hook(graph, queue, "lone", "leaf1")
    assert build.returncode == 0, build.stderr
    lone, leaf1 = build.stdout.split()
    delete(lone)
    code, doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once")
    assert code == 0, err
    assert f"dropping {lone} from the queue: it is no longer in /nix/store (garbage-collected?)" in err
    assert (doc["published"], doc["dropped"]) == (1, 1)
    assert _published(daemon, [lone, leaf1]) == {leaf1}
    assert Queue(str(queue)).entries() == []


@pytest.mark.parametrize("token", ["reader", "bogus"])
def test_an_agent_with_a_refused_token_says_so_and_keeps_the_queue(start_daemon, graph, tmp_path, capsys, token):
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    build = _nix_build_with_hook(graph, queue, "lone")
    assert build.returncode == 0, build.stderr
    if token == "bogus":
        daemon.tokens["bogus"] = secrets.token_urlsafe(24)
    code, _doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once", token=token)
    assert code == 1
    expected = "lacks the 'push' scope" if token == "reader" else "refused the token from"
    assert expected in err and f"client-token-{token}" in err, err
    assert "Traceback" not in err
    assert [e.path for e in Queue(str(queue)).entries()] == build.stdout.split()
    assert _published(daemon, build.stdout.split()) == set()


def test_while_the_server_is_down_the_queue_grows_and_it_drains_when_the_server_is_back(
    make_daemon_config, start_daemon, graph, tmp_path
):
    daemon = make_daemon_config()  # not started yet: its port refuses connections
    queue = tmp_path / "queue.sqlite"
    build = _nix_build_with_hook(graph, queue, "leaf1", "lone")
    assert build.returncode == 0, build.stderr
    first = build.stdout.split()
    log = tmp_path / "agent.log"
    argv = [*NIKS3, "agent", "--queue", str(queue), "--server", daemon.url, "--tries", "1", "--max-backoff", "1"]
    argv += ["--token-file", _token_file(tmp_path, daemon)]
    with log.open("w") as sink, subprocess.Popen(argv, stderr=sink, env=_env()) as agent:
        try:
            deadline = time.monotonic() + 60
            while "cannot reach" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "cannot reach" in log.read_text(), log.read_text()
            more = _nix_build_with_hook(graph, queue, "top")  # built while the server is down
            assert more.returncode == 0, more.stderr
            everything = sorted(set(first) | set(_env_built(graph)))
            assert {e.path for e in Queue(str(queue)).entries()} == set(everything)
            start_daemon(daemon)
            deadline = time.monotonic() + 120
            while Queue(str(queue)).entries() and time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.2)
            assert Queue(str(queue)).entries() == [], log.read_text()
            assert _published(daemon, everything) == set(everything)
        finally:
            agent.terminate()
            assert agent.wait(60) == 0, log.read_text()  # SIGTERM is a clean stop
    copied = _substitute(daemon, tmp_path, everything, _keys(daemon))
    assert copied.returncode == 0, copied.stderr


def _env_built(expr: Path) -> list[str]:
    """Every output of ``expr`` that is valid in the store now."""
    drvs = subprocess.run(["nix-instantiate", str(expr)], capture_output=True, text=True, check=True, env=_env())
    outs = subprocess.run(
        ["nix-store", "--query", "--outputs", *drvs.stdout.split()], capture_output=True, text=True, check=True
    ).stdout.split()
    valid = subprocess.run(["nix-store", "--check-validity", "--print-invalid", *outs], capture_output=True, text=True)
    invalid = set(valid.stdout.split())
    return [o for o in outs if o not in invalid]


def test_the_store_scan_queues_paths_the_hook_never_saw(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    started = time.time() - 1
    # nix-store --add: registered in the store, no build, so no post-build hook
    blob = tmp_path / f"fetched-{secrets.token_hex(4)}"
    blob.write_text("a path that was fetched, not built\n")
    added = subprocess.run(["nix-store", "--add", str(blob)], capture_output=True, text=True, check=True).stdout.strip()
    built = build_expr(graph_expr(secrets.token_hex(6)), tmp_path / "plain")  # built without the hook
    request.addfinalizer(lambda: delete(*built, added))
    code, doc, err = _agent(
        daemon, tmp_path, capsys, "--queue", str(queue), "--once", "--scan-store", "--since", str(started)
    )
    assert code == 0, err
    assert _published(daemon, [added, *built]) == {added, *built}
    assert Queue(str(queue)).entries() == []
    later = tmp_path / "later"
    later.write_text(f"added after the first scan {secrets.token_hex(4)}\n")
    path = subprocess.run(["nix-store", "--add", str(later)], capture_output=True, text=True, check=True).stdout
    request.addfinalizer(lambda: delete(path.strip()))
    code, doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once", "--scan-store")
    assert code == 0, err
    assert doc["published"] == 1, err  # only what is new since the cursor kept in the queue
    assert _published(daemon, [path.strip()]) == {path.strip()}


def test_niks3_build_with_a_failing_derivation_caches_what_succeeded_and_exits_like_nix(
    start_daemon, graph, tmp_path, capsys
):
    daemon = start_daemon()
    nix_args = ["-f", str(graph), "top", "lone", "above", "--keep-going", "--no-link", *NO_SUBSTITUTERS]
    fallback = tmp_path / "leftovers.sqlite"
    argv = ["build", "--server", daemon.url, "--token-file", _token_file(tmp_path, daemon), "--queue", str(fallback)]
    code = main([*argv, "--", *nix_args])
    _, err = capsys.readouterr()
    succeeded = _env_built(graph)
    names = sorted(Path(p).name[33:] for p in succeeded)
    assert names == ["up-leaf1", "up-leaf2", "up-lone", "up-mid", "up-top"], err
    assert _published(daemon, succeeded) == set(succeeded), err
    assert closure_problems(daemon.s3) == []
    assert not fallback.exists() or Queue(str(fallback)).entries() == []
    plain = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "build", *nix_args],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    assert plain.returncode != 0
    assert code == plain.returncode, err

    copied = _substitute(daemon, tmp_path, succeeded, _keys(daemon))
    assert copied.returncode == 0, copied.stderr


def test_under_systemd_the_agent_is_ready_reports_the_queue_length_and_stops_cleanly(start_daemon, graph, tmp_path):
    """Plays systemd: a NOTIFY_SOCKET datagram socket gets READY=1, then STATUS= lines with the number of waiting
    entries, down to 0 once the queue is drained; SIGTERM sends STOPPING=1 and exits 0."""
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    build = _nix_build_with_hook(graph, queue, "lone", "leaf2")
    assert build.returncode == 0, build.stderr
    notify = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(notify)
    receiver.settimeout(120)
    argv = [*NIKS3, "agent", "--queue", str(queue), "--server", daemon.url]
    argv += ["--token-file", _token_file(tmp_path, daemon)]
    messages: list[str] = []
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=_env(NOTIFY_SOCKET=notify)) as agent:
        try:
            while not any(m.startswith("STATUS=0 waiting, 0 failed; pushed") for m in messages):
                messages.append(receiver.recv(4096).decode())
        finally:
            agent.terminate()
            _, err = agent.communicate(timeout=60)
        while True:
            try:
                receiver.settimeout(0.5)
                messages.append(receiver.recv(4096).decode())
            except TimeoutError:
                break
    receiver.close()
    assert agent.returncode == 0, err
    assert messages[0] == "READY=1", messages
    assert "STATUS=2 waiting, 0 failed; started" in messages, messages
    assert any(m.startswith("STATUS=2 waiting, 0 failed; pushing batch 1 (2 paths)") for m in messages), messages
    assert "STOPPING=1" in messages, messages
    assert Queue(str(queue)).entries() == []


def test_with_a_modern_nix_the_hook_and_the_agent_publish_every_built_path(start_daemon, modern_nix, tmp_path):
    """The same as the first test with Debian 13's Nix (2.26), which passes OUT_PATHS, in its chroot: the hook
    script and the agent run there, on its Python; the host's Nix 2.8 substitutes the result."""
    daemon = start_daemon()
    queue = tmp_path / "modern-queue.sqlite"
    hook = tmp_path / "modern-hook.sh"
    modern_nix.niks3("hook-script", "--queue", str(queue), "--output", str(hook))
    expr = tmp_path / "modern.nix"
    expr.write_text(graph_expr(secrets.token_hex(6)))
    out = modern_nix.run(
        ["nix-build", str(expr), "--no-out-link", *NO_SUBSTITUTERS, "--option", "post-build-hook", str(hook)]
    )
    built = sorted(out.stdout.decode().split())
    assert len(built) == 5, out.stderr.decode()
    with Queue(str(queue)) as q:
        assert {e.path for e in q.entries()} == set(built)
    token = _token_file(tmp_path, daemon)
    modern_nix.niks3("agent", "--once", "--queue", str(queue), "--server", daemon.url, "--token-file", token)
    assert Queue(str(queue)).entries() == []
    assert _published(daemon, built) == set(built)
    assert closure_problems(daemon.s3) == []
    copied = _substitute(daemon, tmp_path, built, _keys(daemon))
    assert copied.returncode == 0, copied.stderr


def test_a_corrupt_path_fails_alone_and_the_queue_says_why(start_daemon, graph, tmp_path, capsys):
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    build = _nix_build_with_hook(graph, queue, "lone", "leaf1")
    assert build.returncode == 0, build.stderr
    lone, leaf1 = build.stdout.split()
    corrupt(lone, "f", b"not what the store's database says\n")
    code, doc, err = _agent(daemon, tmp_path, capsys, "--queue", str(queue), "--once", "--max-attempts", "2")
    assert code == 1, err
    assert (doc["published"], doc["failed"], doc["waiting"]) == (1, 1, 0), err
    assert _published(daemon, [lone, leaf1]) == {leaf1}  # the good path was not held back by the bad one
    (entry,) = Queue(str(queue)).entries()
    assert (entry.path, entry.failed, entry.attempts) == (lone, True, 2)
    assert lone in (entry.last_error or "") and "corrupt" in (entry.last_error or ""), entry.last_error
    assert main(["queue", "--queue", str(queue)]) == 0
    listing = capsys.readouterr().out
    assert f"{lone}  FAILED after 2 tries" in listing and "last error:" in listing, listing
    assert main(["queue", "--queue", str(queue), "retry"]) == 0
    assert Queue(str(queue)).counts() == (1, 0)


def test_two_builds_hooking_while_the_agent_drains_lose_and_duplicate_nothing(start_daemon, tmp_path, request):
    """Two nix-build processes run their hooks into one queue at the same time as a running agent drains it:
    every built path is published, the queue ends empty, and no push session is left behind."""
    daemon = start_daemon()
    queue = tmp_path / "queue.sqlite"
    hook = tmp_path / "hook.sh"
    assert main(["hook-script", "--queue", str(queue), "--output", str(hook)]) == 0
    Queue(str(queue)).close()
    exprs = []
    for name in ("a", "b"):
        expr = tmp_path / f"graph-{name}.nix"
        expr.write_text(graph_expr(secrets.token_hex(6)))
        exprs.append(expr)
    request.addfinalizer(lambda: delete(*(p for e in exprs for p in _env_built(e))))
    log = tmp_path / "agent.log"
    argv = [*NIKS3, "agent", "--queue", str(queue), "--server", daemon.url, "--batch", "3"]
    argv += ["--token-file", _token_file(tmp_path, daemon)]
    with log.open("w") as sink, subprocess.Popen(argv, stderr=sink, env=_env()) as agent:
        try:
            builds = [
                subprocess.Popen(
                    ["nix-build", str(e), "--no-out-link", *NO_SUBSTITUTERS, "--option", "post-build-hook", str(hook)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )
                for e in exprs
            ]
            outputs = [b.communicate(timeout=600) for b in builds]
            assert [b.returncode for b in builds] == [0, 0], [err for _, err in outputs]
            built = sorted(p for out, _ in outputs for p in out.split())
            assert len(built) == 10
            deadline = time.monotonic() + 180
            while Queue(str(queue)).entries() and time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.2)
            assert Queue(str(queue)).entries() == [], log.read_text()
        finally:
            agent.terminate()
            agent.wait(60)
    assert _published(daemon, built) == set(built), log.read_text()
    assert closure_problems(daemon.s3) == []
    assert "open" not in asyncio.run(_sessions(daemon.dsn))
