"""Socket activation, sd_notify datagrams and the health-gated watchdog, tested by playing systemd."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from niks3d.errors import ConfigError
from niks3d.systemd import Notifier, listen_fds, listen_fds_with_names, run_watchdog, watchdog_interval

REPO = Path(__file__).resolve().parent.parent
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"

# The activated child: takes over its sockets, reports what it got on stdout, then answers one connection.
CHILD = r"""
import fcntl, json, os, socket
from niks3d.systemd import listen_fds_with_names
pairs = listen_fds_with_names()
report = {
    "names": [name for name, _ in pairs],
    "sockets": [
        {
            "fd": s.fileno(),
            "family": int(s.family),
            "type": int(s.type),
            "address": list(s.getsockname()),
            "listening": s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
            "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        }
        for _, s in pairs
    ],
    "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
    "fd3_open": os.path.exists("/proc/self/fd/3"),
}
print(json.dumps(report), flush=True)
if pairs:
    conn, _ = pairs[0][1].accept()
    conn.sendall(b"hello from fd %d" % pairs[0][1].fileno())
    conn.close()
"""

# Plays systemd by hand: moves the inherited socket to fd 3, sets LISTEN_* for the pid it is about to exec.
LAUNCHER = r"""
import os, sys
fd, pid_mode = int(sys.argv[1]), sys.argv[2]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
pid = os.getpid() if pid_mode == "self" else os.getppid()
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(pid))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3]])
"""


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.mark.skipif(not Path(SOCKET_ACTIVATE).exists(), reason="systemd-socket-activate is not installed")
def test_socket_activated_child_accepts_on_the_inherited_listening_socket() -> None:
    port = _free_port()
    argv = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", f"PYTHONPATH={REPO}"]
    argv += ["--", sys.executable, "-c", CHILD]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), text=True) as proc:
        try:
            # systemd-socket-activate execs the child only when the first connection arrives.
            with _connect(port, time.monotonic() + 10) as conn:
                assert proc.stdout is not None
                report = json.loads(proc.stdout.readline() or "null")
                assert report is not None, proc.stderr.read() if proc.stderr else ""
                conn.settimeout(10)
                greeting = conn.recv(100)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
    assert report["names"] == ["web"]
    [sock] = report["sockets"]
    assert sock["fd"] == 3
    assert (sock["family"], sock["type"]) == (socket.AF_INET, socket.SOCK_STREAM)
    assert sock["address"] == ["127.0.0.1", port]
    assert sock["listening"] == 1
    assert sock["cloexec"] is True
    assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    assert greeting == b"hello from fd 3"


def _run_with_fd3(pid_mode: str) -> tuple[dict[str, Any], bytes]:
    """Start CHILD with a listening socket on fd 3 and LISTEN_PID naming the child or its parent."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        argv = [sys.executable, "-c", LAUNCHER, str(listener.fileno()), pid_mode, CHILD]
        with subprocess.Popen(
            argv,
            pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(),
            text=True,
        ) as proc:
            try:
                stdout, greeting = "", b""
                if pid_mode == "self":
                    with _connect(port, time.monotonic() + 10) as conn:
                        conn.settimeout(10)
                        greeting = conn.recv(100)
                stdout, stderr = proc.communicate(timeout=10)
                assert proc.returncode == 0, stderr
            finally:
                proc.kill()
    return json.loads(stdout), greeting


def test_manually_passed_fd3_becomes_a_cloexec_listening_socket() -> None:
    report, greeting = _run_with_fd3("self")
    assert report["names"] == ["unknown"]
    assert report["sockets"] == [
        {
            "fd": 3,
            "family": socket.AF_INET,
            "type": socket.SOCK_STREAM,
            "address": ["127.0.0.1", report["sockets"][0]["address"][1]],
            "listening": 1,
            "cloexec": True,
        }
    ]
    assert greeting == b"hello from fd 3"


def test_listen_pid_of_another_process_leaves_fd3_alone() -> None:
    report, _ = _run_with_fd3("parent")
    assert report["sockets"] == []
    assert report["fd3_open"] is True
    assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_without_listen_variables_nothing_is_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert listen_fds() == []


def test_pid_mismatch_returns_nothing_and_unsets_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDS" not in os.environ


def test_unset_environment_false_keeps_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "1"


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LISTEN_PID": "self", "LISTEN_FDS": "two"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "-1"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "12x"}, "LISTEN_PID"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}, "LISTEN_FDNAMES"),
    ],
)
def test_malformed_listen_variables_are_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, str(os.getpid()) if value == "self" else value)
    with pytest.raises(ConfigError, match=named):
        listen_fds_with_names()
    assert "LISTEN_PID" not in os.environ


# --- sd_notify -------------------------------------------------------------------------------------------


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        path = str(tmp_path / "notify")
        receiver.bind(path)
        receiver.settimeout(5)
        yield receiver, path


def _drain(receiver: socket.socket) -> list[bytes]:
    received = []
    receiver.setblocking(False)
    try:
        while True:
            received.append(receiver.recv(4096))
    except BlockingIOError:
        return received
    finally:
        receiver.settimeout(5)


def test_notifier_sends_the_exact_datagrams_to_notify_socket(
    monkeypatch: pytest.MonkeyPatch, notify_path: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("migrating: 3 of 7 — äöü")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.notify(STATUS="two\nlines", EXTEND_TIMEOUT_USEC=5_000_000)
    assert notifier.send_raw("FDSTORE=0")
    received = [receiver.recv(4096) for _ in range(6)]
    assert received == [
        b"READY=1",
        "STATUS=migrating: 3 of 7 — äöü".encode(),
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STATUS=two lines\nEXTEND_TIMEOUT_USEC=5000000",
        b"FDSTORE=0",
    ]


def test_reloading_carries_a_current_monotonic_timestamp(notify_path: tuple[socket.socket, str]) -> None:
    receiver, path = notify_path
    before = time.monotonic_ns() // 1000
    assert Notifier(path).reloading()
    after = time.monotonic_ns() // 1000
    first, second = receiver.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notifier_reaches_an_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"niks3d-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier(unset_environment=True)
        assert "NOTIFY_SOCKET" not in os.environ
        assert notifier.ready()
        assert notifier.status("serving")
        assert [receiver.recv(4096), receiver.recv(4096)] == [b"READY=1", b"STATUS=serving"]


def test_notifier_without_notify_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_notifier_survives_a_vanished_socket(
    notify_path: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, path = notify_path
    notifier = Notifier(path)
    assert notifier.ready()
    receiver.close()
    Path(path).unlink()
    with caplog.at_level(logging.DEBUG, logger="niks3d.systemd"):
        assert notifier.stopping() is False
    assert any("could not notify systemd" in r.getMessage() for r in caplog.records)


def test_unsupported_notify_socket_disables_the_notifier_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="niks3d.systemd"):
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


def test_notify_rejects_lower_case_field_names(notify_path: tuple[socket.socket, str]) -> None:
    _, path = notify_path
    with pytest.raises(ValueError, match="status"):
        Notifier(path).notify(status="x")


# --- watchdog --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("0", None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value))
    assert watchdog_interval() == expected


def test_malformed_watchdog_usec_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30s")
    with pytest.raises(ConfigError, match="WATCHDOG_USEC"):
        watchdog_interval()


async def test_watchdog_pings_only_while_healthy(
    notify_path: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, path = notify_path
    interval = 0.05
    state = "healthy"

    async def healthy() -> bool:
        if state == "hangs":
            await asyncio.sleep(60)
        if state == "raises":
            raise ConnectionResetError("database went away")
        return state == "healthy"

    async def phase(new_state: str, seconds: float) -> list[bytes]:
        nonlocal state
        state = new_state
        await asyncio.sleep(2 * interval)  # let a check that started before the switch finish
        _drain(receiver)
        await asyncio.sleep(seconds)
        return _drain(receiver)

    caplog.set_level(logging.INFO, logger="niks3d.systemd")
    task = asyncio.create_task(run_watchdog(Notifier(path), interval, healthy))
    try:
        healthy_pings = await phase("healthy", 0.25)
        false_pings = await phase("false", 0.2)
        hung_pings = await phase("hangs", 0.2)
        raising_pings = await phase("raises", 0.15)
        resumed_pings = await phase("healthy", 0.25)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert healthy_pings and set(healthy_pings) == {b"WATCHDOG=1"}
    assert len(healthy_pings) >= 3
    assert false_pings == hung_pings == raising_pings == []
    assert resumed_pings and set(resumed_pings) == {b"WATCHDOG=1"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert getattr(warnings[0], "event", None) == "watchdog.unhealthy"
    assert "returned false" in warnings[0].getMessage()
    recovered = [r for r in caplog.records if getattr(r, "event", None) == "watchdog.healthy"]
    assert len(recovered) == 1
    assert recovered[0].levelno == logging.INFO


async def test_watchdog_check_timeout_bounds_a_hanging_check(
    notify_path: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, path = notify_path
    calls = 0

    async def hangs_once() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)
        return True

    caplog.set_level(logging.WARNING, logger="niks3d.systemd")
    task = asyncio.create_task(run_watchdog(Notifier(path), 0.05, hangs_once, check_timeout=0.1))
    try:
        first = await asyncio.get_running_loop().run_in_executor(None, receiver.recv, 4096)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert first == b"WATCHDOG=1"
    assert calls >= 2
    assert "no answer within 0.1s" in caplog.text
