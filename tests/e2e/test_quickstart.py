"""The README's quick start: `niks3d dev` comes up on a fresh machine, answers /ready, serves nix-cache-info,
and Ctrl-C stops everything and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from niks3d.devenv.process import free_port
from tests.fixtures.daemon import niks3d_argv


def _start_dev(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """``niks3d dev`` on a free port in ``tmp_path/dev``, once it says it is running: (process, port, its
    directory, its log)."""
    port = free_port()
    workdir = tmp_path / "dev"
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            niks3d_argv("dev", "--port", str(port), "--dir", str(workdir)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "niks3d dev is running" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, port, workdir, log_path


@pytest.mark.postgres
@pytest.mark.s3
def test_niks3d_dev_serves_a_working_cache(tmp_path: Path) -> None:
    process, port, workdir, log_path = _start_dev(tmp_path)
    try:
        output = log_path.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
            assert r.status == 200 and json.load(r)["status"] == "ready"
        cache_url = re.search(r"cache \(Nix reads\): (\S+)", output)
        assert cache_url, output
        with urllib.request.urlopen(f"{cache_url[1]}/nix-cache-info", timeout=10) as r:
            text = r.read().decode()
        assert "StoreDir: /nix/store\n" in text and "Priority: 40\n" in text
        public_key = re.search(r"public key:\s+(\S+)", output)
        assert public_key and public_key[1].startswith("niks3d-dev-1:")
        assert (workdir / "secrets" / "push-token").stat().st_mode & 0o077 == 0
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, log_path.read_text()[-3000:]
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left behind: {leftovers}"


@pytest.mark.postgres
@pytest.mark.s3
def test_niks3d_dev_says_so_and_exits_when_postgresql_dies(tmp_path: Path) -> None:
    process, _port, workdir, log_path = _start_dev(tmp_path)
    try:
        [pid_file] = workdir.glob("postgres/**/postmaster.pid")
        postmaster = int(pid_file.read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        # It notices, says which child died and how, and exits with 1 (instead of serving 503s forever).
        assert process.wait(60) == 1, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "PostgreSQL died; niks3d dev stops" in output, output[-3000:]
    assert "killed by signal 9" in output, output[-3000:]
    assert not pid_file.exists(), "the stale postmaster.pid was left behind"
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left behind: {leftovers}"
