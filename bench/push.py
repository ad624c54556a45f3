"""Benchmark: `niks3 push` wall time, throughput and peak client memory.

Two workloads, each pushed by the real ``niks3`` command in a child process whose peak RSS is read from
``getrusage(RUSAGE_CHILDREN)``:

* ``closure``: ``--paths`` store paths (a binary tree of references) of ``--closure-mib`` random bytes in all:
  many small NARs, so per-path costs and parallel compression show;
* ``big``: one store path of ``--big-mib`` random bytes (a multipart upload): streaming and the memory bound.

Then each closure is pushed again, when everything is cached (the cost of a no-op push). The server is
``--server``/``NIKS3_SERVER_URL`` with ``--token-file``/``NIKS3_TOKEN_FILE``, or, with ``--dev``, a throwaway
``niks3d dev`` started for the run. Store paths are salted, so every run uploads fresh data.

    .venv/bin/python bench/push.py --dev [--paths 200] [--closure-mib 256] [--big-mib 1024]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from niks3d.devenv.nixfixtures import build_expr, make_closure
from niks3d.devenv.process import free_port

NIKS3 = [sys.executable, "-c", "from niks3d.client.main import main; raise SystemExit(main())"]
NIKS3D = [sys.executable, "-c", "from niks3d.cli.main import main; raise SystemExit(main())"]


@contextlib.contextmanager
def dev_server(workdir: Path) -> Iterator[tuple[str, str]]:
    """``niks3d dev`` on a free port; yields (server URL, push token file)."""
    port = free_port()
    log_path = workdir / "dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*NIKS3D, "dev", "--port", str(port), "--dir", str(workdir / "dev")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 120
        while "niks3d dev is running" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"niks3d dev did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        token = re.search(r"push token file:\s+(\S+)", log_path.read_text())
        if token is None:
            raise SystemExit("niks3d dev did not print its push token file")
        yield f"http://127.0.0.1:{port}", token[1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def push(server: str, token: str, paths: list[str], label: str, nar_bytes: int) -> None:
    """Push ``paths`` in a child process and print time, throughput and the child's peak RSS."""
    argv = [*NIKS3, "push", "--server", server, "--token-file", token, "--no-progress", "-q", *paths]
    start = time.monotonic()
    child = subprocess.Popen(argv)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    if child.returncode != 0:
        raise SystemExit(f"niks3 push failed with exit code {child.returncode}")
    rate = nar_bytes / seconds / 2**20 if nar_bytes else 0
    print(f"{label:28} {seconds:7.2f} s  {rate:7.1f} MiB/s of NAR  peak RSS {usage.ru_maxrss / 1024:.0f} MiB")


def nar_size(paths: list[str]) -> int:
    out = subprocess.run(["nix-store", "--query", "--size", *paths], check=True, capture_output=True, text=True)
    return sum(int(n) for n in out.stdout.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("NIKS3_SERVER_URL"))
    parser.add_argument("--token-file", default=os.environ.get("NIKS3_TOKEN_FILE"))
    parser.add_argument("--dev", action="store_true", help="start a throwaway niks3d dev for the run")
    parser.add_argument("--paths", type=int, default=200)
    parser.add_argument("--closure-mib", type=int, default=256)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    salt = secrets.token_hex(6)
    with tempfile.TemporaryDirectory(prefix="niks3-bench-") as tmp:
        workdir = Path(tmp)
        print(f"building {args.paths} paths ({args.closure_mib} MiB) and one of {args.big_mib} MiB ...")
        closure = make_closure(workdir / "build", salt, args.paths, args.closure_mib << 20)
        big_script = f"export PATH=/bin:/usr/bin; mkdir $out; head -c {args.big_mib << 20} /dev/urandom > $out/blob"
        (big,) = build_expr(
            f'derivation {{ name = "push-bench-big"; salt = "{salt}"; system = builtins.currentSystem; '
            f'builder = "/bin/sh"; args = [ "-c" "{big_script}" ]; }}\n',
            workdir / "build",
        )
        server_cm: contextlib.AbstractContextManager[tuple[str, str]]
        if args.dev:
            server_cm = dev_server(workdir)
        elif args.server and args.token_file:
            server_cm = contextlib.nullcontext((args.server, args.token_file))
        else:
            parser.error("give --dev, or --server and --token-file (or NIKS3_SERVER_URL and NIKS3_TOKEN_FILE)")
        try:
            with server_cm as (server, token):
                push(server, token, [closure[0]], f"closure: {args.paths} paths", nar_size(closure))
                push(server, token, [closure[0]], "closure again (cached)", 0)
                push(server, token, [big], f"big: {args.big_mib} MiB NAR", nar_size([big]))
                push(server, token, [big], "big again (cached)", 0)
        finally:
            subprocess.run(["nix-store", "--delete", big, *closure], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
