"""The child-process plumbing under the harness: start, readiness, death at start, stop, parent death."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from niks3d.devenv.process import ManagedProcess, NotReady, async_running, free_ports, running
from niks3d.errors import ServiceError
from tests.devenv.procs import alive, group_members


def _never_ready() -> None:
    raise NotReady("this probe never passes")


def _ready() -> None:
    pass


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(16)
    assert len(set(ports)) == 16
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_child_that_dies_at_start_raises_service_error_with_its_stderr(tmp_path: Path) -> None:
    script = "echo 'fatal: unknown flag --frobnicate' >&2; exit 3"

    def launch() -> tuple[ManagedProcess, Callable[[], None]]:
        return ManagedProcess("doomed", ["sh", "-c", script], log_path=tmp_path / "doomed.log"), _never_ready

    started = time.monotonic()
    with pytest.raises(ServiceError) as info, running(launch, ready_timeout=60):
        pytest.fail("the body must not run")
    message = str(info.value)
    assert "doomed exited with status 3" in message
    assert "fatal: unknown flag --frobnicate" in message
    assert str(tmp_path / "doomed.log") in message
    assert time.monotonic() - started < 10, "the death was noticed only at the readiness timeout"


def test_a_child_that_never_gets_ready_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", ["sleep", "1000"], log_path=tmp_path / "sleeper.log")
    with (
        pytest.raises(ServiceError, match=r"sleeper was not ready within 0\.5s \(last probe: this probe never"),
        running(lambda: (process, _never_ready), ready_timeout=0.5),
    ):
        pytest.fail("the body must not run")
    assert not alive(process.pid)


def test_stop_kills_a_child_that_ignores_sigterm_and_its_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"trap '' TERM; sleep 1000 & echo $! > {pidfile}; wait"
    process = ManagedProcess("stubborn", ["sh", "-c", script], log_path=tmp_path / "stubborn.log", stop_timeout=0.5)
    process.start()
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    assert group_members(process.pid) >= {process.pid, grandchild}
    started = time.monotonic()
    assert process.stop() == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    assert _wait_dead(grandchild), "the child's own child survived the stop"
    assert process.stop() == -signal.SIGKILL  # stopping again is harmless


def test_a_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    parent_script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from niks3d.devenv.process import ManagedProcess
        p = ManagedProcess("orphan", ["sleep", "1000"], log_path=Path({str(tmp_path / "orphan.log")!r}))
        p.start()
        Path({str(pidfile)!r}).write_text(str(p.pid))
        time.sleep(1000)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert parent.poll() is None, "the parent process failed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert alive(child)
    finally:
        parent.kill()
        parent.wait()
    assert _wait_dead(child), "the child outlived its SIGKILLed parent"


def test_the_log_records_the_child_output(tmp_path: Path) -> None:
    process = ManagedProcess("talker", ["sh", "-c", "echo out; echo err >&2"], log_path=tmp_path / "talker.log")
    process.run(timeout=30)
    assert process.returncode == 0
    assert process.log_text().split() == ["out", "err"]


async def test_async_running_stops_the_child_when_the_task_is_cancelled(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", ["sleep", "1000"], log_path=tmp_path / "sleeper.log")
    entered = asyncio.Event()

    async def body() -> None:
        async with async_running(lambda: (process, _ready), ready_timeout=30):
            entered.set()
            await asyncio.sleep(1000)

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 30)
    assert alive(process.pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(process.pid)
    assert process.returncode == -signal.SIGTERM


async def test_async_running_reports_a_child_that_dies_at_start(tmp_path: Path) -> None:
    process = ManagedProcess("doomed", ["sh", "-c", "echo 'no config' >&2; exit 2"], log_path=tmp_path / "d.log")
    with pytest.raises(ServiceError, match=r"(?s)doomed exited with status 2.*no config"):
        async with async_running(lambda: (process, _never_ready), ready_timeout=60):
            pytest.fail("the body must not run")


def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    process = ManagedProcess("idle", ["true"], log_path=tmp_path / "idle.log")
    assert process.stop() is None
    assert not (tmp_path / "idle.log").exists()
    with pytest.raises(ServiceError, match="idle has not been started"):
        _ = process.pid
