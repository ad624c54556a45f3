"""Benchmark: three writers of the same closure shape, one after another on one machine.

* ``niks3 push`` to a throwaway ``niks3d dev`` (daemon, SeaweedFS, PostgreSQL);
* ``nix copy --to 'http://<niks3d>/?compression=zstd'`` to the same stack (docs/api.md, stock Nix as a writer:
  the daemon decompresses, hashes twice and streams on every NAR);
* ``nix copy --to 'http://<nginx>/?compression=zstd'``: nginx with WebDAV ``PUT`` into a directory (kiss-cache's
  way), the reference of a server that checks nothing.

Each writer gets its own salt (fresh paths of the same shape and size), so each uploads everything. Printed per
writer: wall time, the client's CPU, and the server side's CPU by process (niks3d, SeaweedFS, PostgreSQL, nginx),
and niks3d's CPU per MiB received next to the floor this machine needs for the work it must do (zstd decompress,
SHA-256 of the file and of the NAR) measured on the same bytes. Then ``--big-mib`` of random data in one path is
copied with ``nix copy --to niks3d`` while niks3d's resident memory is sampled: it must stay flat.

    .venv/bin/python -m bench.write [--paths 60] [--closure-mib 300] [--big-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import zstandard

from bench.push import NIX, choose_files, closure_expr, dev_server, nar_size, push, timed, warm
from niks3d.devenv.process import free_port
from niks3d.nix.signing import SecretKey
from testkit.nixfixtures import build_expr
from testkit.proctree import process_tree

NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/cache;
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(workdir: Path) -> Iterator[tuple[str, int]]:
    """nginx with WebDAV PUT on a free port; (URL, pid)."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        raise SystemExit("nginx is not installed: apt-get install nginx-light")
    (workdir / "cache").mkdir(parents=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_of(pid: int) -> float:
    return sum(p.cpu_seconds for p in process_tree(pid))


def rss_mib(pid: int) -> int:
    with contextlib.suppress(OSError), Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def dev_pid() -> int:
    """The ``niks3d dev`` child of this process (the daemon runs in it)."""
    for process in process_tree(os.getpid()):
        with contextlib.suppress(OSError):
            if b"\0dev\0" in Path(f"/proc/{process.pid}/cmdline").read_bytes():
                return process.pid
    raise SystemExit("cannot find the niks3d dev process")


def netrc_for(workdir: Path, url: str, token_file: str) -> Path:
    host = re.sub(r"^https?://", "", url).split(":")[0].split("/")[0]
    path = workdir / "netrc"
    path.write_text(f"machine {host} password {Path(token_file).read_text().strip()}\n")
    path.chmod(0o600)
    return path


def copy(url: str, root: str, workdir: Path, netrc: Path | None) -> tuple[float, float]:
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / f"xdg-{secrets.token_hex(4)}")}
    argv = [*NIX, "copy", "--to", f"{url}/?compression=zstd", root]
    if netrc is not None:
        argv += ["--option", "netrc-file", str(netrc)]
    run = timed(argv, env=env)
    return run.seconds, run.cpu


def floor_seconds(root: str) -> float:
    """CPU seconds for what niks3d must do with ``root``'s closure as Nix sends it: zstd-decompress, SHA-256
    of the compressed file and of the NAR (compressed here first, outside the measurement)."""
    paths = subprocess.run(["nix-store", "-qR", root], capture_output=True, text=True, check=True).stdout.split()
    total = 0.0
    for path in paths:
        nar = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout
        body = zstandard.ZstdCompressor(level=3).compress(nar)
        start = time.process_time()
        hashlib.sha256(body).digest()
        hashlib.sha256(zstandard.ZstdDecompressor().decompressobj().decompress(body)).digest()
        total += time.process_time() - start
    return total


def build(args: argparse.Namespace, workdir: Path, groups: list[list[Path]]) -> tuple[str, int]:
    expr = closure_expr(groups, secrets.token_hex(6))
    paths = build_expr(expr, workdir / f"build-{secrets.token_hex(3)}")
    root = paths[0]
    closure = subprocess.run(["nix-store", "-qR", root], capture_output=True, text=True, check=True).stdout.split()
    warm(closure)
    return root, nar_size(closure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=60)
    parser.add_argument("--closure-mib", type=int, default=300)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="niks3-write-bench-") as tmp:
        workdir = Path(tmp)
        groups = choose_files(args.paths, args.closure_mib << 20)
        upstream = SecretKey.generate("bench-upstream-1").public_key().to_text()
        with dev_server(workdir, upstream) as server:
            pid = dev_pid()
            netrc = netrc_for(workdir, server.url, server.token_file)
            assert server.cpu is not None
            print(f"closure: {args.paths} paths, about {args.closure_mib} MiB; each writer its own salt", flush=True)

            root, nar_bytes = build(args, workdir, groups)
            push(server, [root], "niks3 push", nar_bytes, [])

            root, nar_bytes = build(args, workdir, groups)
            before = server.cpu()
            seconds, client_cpu = copy(server.url, root, workdir, netrc)
            sides = {k: v - before.get(k, 0.0) for k, v in server.cpu().items()}
            mib = nar_bytes / 2**20
            detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sides.items(), key=lambda kv: -kv[1]))
            print(
                f"{'nix copy --to niks3d':38} {seconds:6.2f} s {mib / seconds:6.1f} MiB/s  CPU {client_cpu:5.1f} s"
                f"  (server side: {detail})",
                flush=True,
            )
            floor = floor_seconds(root)
            print(
                f"niks3d CPU per NAR MiB (closure): {sides.get('niks3d', 0.0) / mib * 1000:.1f} ms; the floor (unzstd,"
                f" SHA-256 twice) {floor / mib * 1000:.1f} ms: ratio {sides.get('niks3d', 0.0) / max(floor, 1e-9):.2f}",
                flush=True,
            )

            root, nar_bytes = build(args, workdir, groups)
            with nginx(workdir / "nginx") as (url, nginx_pid):
                nginx_before = cpu_of(nginx_pid)
                seconds, client_cpu = copy(url, root, workdir, None)
                print(
                    f"{'nix copy --to nginx WebDAV':38} {seconds:6.2f} s {nar_bytes / 2**20 / seconds:6.1f} MiB/s"
                    f"  CPU {client_cpu:5.1f} s  (nginx {cpu_of(nginx_pid) - nginx_before:.1f} s)",
                    flush=True,
                )

            if args.big_mib:
                script = f"export PATH=/bin:/usr/bin; head -c {args.big_mib << 20} /dev/urandom > $out"
                expr = (
                    f'derivation {{ name = "write-bench-big"; salt = "{secrets.token_hex(6)}"; '
                    f'system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "{script}" ]; }}'
                )
                (big,) = build_expr(expr, workdir / "big")
                start_rss = rss_mib(pid)
                peak = [start_rss]
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        peak[0] = max(peak[0], rss_mib(pid))
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample)
                sampler.start()
                before = server.cpu()
                seconds, client_cpu = copy(server.url, big, workdir, netrc)
                done.set()
                sampler.join()
                used = server.cpu().get("niks3d", 0.0) - before.get("niks3d", 0.0)
                floor = floor_seconds(big)
                print(
                    f"{args.big_mib} MiB NAR through nix copy --to niks3d: {seconds:.1f} s; niks3d RSS {start_rss} MiB"
                    f" before, peak {peak[0]} MiB during; niks3d CPU {used:.1f} s, floor {floor:.1f} s"
                    f" (ratio {used / max(floor, 1e-9):.2f})",
                    flush=True,
                )
                subprocess.run(["nix-store", "--delete", big], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
