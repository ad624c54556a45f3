"""Playing systemd: socket activation through systemd-socket-activate, and the sd_notify datagrams
(READY=1, STATUS=, WATCHDOG=1, STOPPING=1) read from a NOTIFY_SOCKET the test binds. The watchdog stops
pinging while PostgreSQL does not answer and resumes when it does."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from niks3d.devenv.process import free_port
from tests.fixtures.daemon import niks3d_argv

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed"
)


class NotifyListener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def read(self, timeout: float) -> list[str]:
        """Every datagram that arrives within ``timeout`` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        self.messages.extend(got)
        return got

    def wait_for(self, wanted: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen += self.read(0.2)
            if any(wanted in m.split("\n") for m in seen):
                return seen
        raise AssertionError(f"no {wanted!r} within {timeout}s; got {seen}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _freeze(pg: Any, sig: int) -> None:
    """SIGSTOP/SIGCONT the postmaster and every backend (each leads its own session): PostgreSQL stops
    answering without closing any connection."""
    for pid in [pg.pid, *_children(pg.pid)]:
        os.kill(pid, sig)


def test_socket_activation_notify_and_watchdog(
    make_daemon_config: Any, own_postgres: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dsn = own_postgres.create_database("niks3")
    daemon = make_daemon_config(database={"url": dsn}, server={"listen": ["192.0.2.1:9"]})
    port = free_port()
    notify = NotifyListener(tmp_path / "notify.sock")
    request.addfinalizer(notify.sock.close)
    log_path = tmp_path / "daemon.log"
    argv = [
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        "-E",
        f"NOTIFY_SOCKET={notify.path}",
        "-E",
        "WATCHDOG_USEC=1000000",
        "-E",
        "PYTHONPATH=" + os.environ.get("PYTHONPATH", ""),
        *niks3d_argv("serve", "--config", str(daemon.config_path)),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        # systemd-socket-activate starts the daemon on the first connection; it is answered by the daemon.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
            assert r.status == 200
        seen = notify.wait_for("READY=1", 30)
        assert any(m.startswith("STATUS=starting") for m in seen), seen
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
            assert r.status == 200
        assert "WATCHDOG=1" in notify.read(2.0)
        _freeze(own_postgres, signal.SIGSTOP)
        try:
            notify.read(1.5)  # a ping already on its way may still arrive
            assert "WATCHDOG=1" not in notify.read(2.5), "watchdog kept pinging while PostgreSQL was down"
        finally:
            _freeze(own_postgres, signal.SIGCONT)
        notify.wait_for("WATCHDOG=1", 10)
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 10)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "socket-activated" in log, log[-3000:]
