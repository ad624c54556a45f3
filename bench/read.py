"""Benchmark: the read path of niks3d's proxy against the S3 server itself and nginx serving the same files.

One run builds (or finds) a closure of ``--paths`` store paths holding about ``--mib`` MiB of random data in
all, pushes it with ``niks3 push`` to a throwaway niks3d (PostgreSQL and SeaweedFS from niks3d.devenv),
mirrors the bucket into a directory for nginx, and measures for each server:

- narinfo latency: every narinfo of the closure, ``--rounds`` times, one request after the other on one
  keep-alive connection (what one Nix client's queries cost); the median and the 90th percentile;
- the time to download every NAR with 1, 4 and 16 workers, each with its own keep-alive connection.

The servers: niks3d's proxy streaming NARs (``nar_mode = "stream"``) and redirecting them to presigned URLs
(``"redirect"``, the redirect followed to S3 as Nix does), the S3 server read directly (anonymous GETs, as Nix
reads a public bucket), and nginx (``nginx-light`` from Debian; not needed by the test suite). The client is
a minimal HTTP/1.1 client on raw sockets, the same for every server. Each figure is the median of
``--repeat`` runs. Every body is checked against the object's size in the bucket.

    .venv/bin/python bench/read.py [--paths 300] [--mib 300] [--rounds 5] [--repeat 3] [--uvloop]

``--uvloop`` adds a streaming daemon on uvloop's event loop (uvloop is not a dependency of niks3d; install it
into the environment first).
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from niks3d.client.main import main as niks3_main
from niks3d.devenv.nixfixtures import make_closure
from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.process import free_port
from niks3d.devenv.seaweedfs import SeaweedServer, seaweed_server
from niks3d.nix.signing import SecretKey

BUCKET = "bench-read"
WORKERS = (1, 4, 16)
_HEAD_END = b"\r\n\r\n"


class Connection:
    """One keep-alive HTTP/1.1 connection that GETs a target and counts the body (follows one redirect)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(1 << 20)
        self.pending = b""
        self.redirects: dict[tuple[str, int], Connection] = {}

    def close(self) -> None:
        self.sock.close()
        for other in self.redirects.values():
            other.close()

    def get(self, target: str) -> int:
        """GET ``target``; the length of the body, after following a redirect."""
        request = f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: bench Nix/2.8.0\r\n"
        self.sock.sendall(request.encode() + b"Accept: */*\r\n\r\n")
        while _HEAD_END not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{target}: the server closed the connection")
            self.pending += chunk
        head, _, rest = self.pending.partition(_HEAD_END)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        have = min(len(rest), length)
        self.pending = rest[length:] if len(rest) > length else b""
        view = memoryview(self.buffer)
        while have < length:
            n = self.sock.recv_into(view, min(len(self.buffer), length - have))
            if n == 0:
                raise ConnectionError(f"{target}: the body ended after {have} of {length} bytes")
            have += n
        if status in (301, 302, 307):
            return self._follow(headers["location"])
        if status != 200:
            raise RuntimeError(f"GET {target}: {status}")
        return length

    def _follow(self, location: str) -> int:
        parts = urlsplit(location)
        where = (parts.hostname or "", parts.port or 80)
        if where not in self.redirects:
            self.redirects[where] = Connection(f"http://{where[0]}:{where[1]}")
        return self.redirects[where].get(f"{parts.path}?{parts.query}")


def narinfo_latency(base: str, targets: list[str], rounds: int) -> tuple[float, float]:
    """Median and p90 seconds per narinfo request, sequential on one connection."""
    conn = Connection(base)
    try:
        for target in targets:  # warm-up: caches, connection
            conn.get(target)
        times = []
        for _ in range(rounds):
            for target in targets:
                start = time.perf_counter()
                conn.get(target)
                times.append(time.perf_counter() - start)
    finally:
        conn.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def download_all(base: str, targets: list[tuple[str, int]], workers: int) -> float:
    """Seconds to GET every target with ``workers`` connections in parallel; every length is checked."""
    connections = [Connection(base) for _ in range(workers)]
    lock = threading.Lock()
    queue = list(reversed(targets))
    errors: list[BaseException] = []

    def work(conn: Connection) -> None:
        while True:
            with lock:
                if not queue:
                    return
                target, size = queue.pop()
            try:
                got = conn.get(target)
                if got != size:
                    raise RuntimeError(f"{target}: {got} bytes, expected {size}")
            except BaseException as exc:  # reported by the caller
                errors.append(exc)
                return

    threads = [threading.Thread(target=work, args=(c,)) for c in connections]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in connections:
        c.close()
    if errors:
        raise errors[0]
    return elapsed


def _secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def _wait_http(url: str, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within 60 s")


@contextmanager
def running(argv: list[str], url: str, what: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(url, process, what, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def niks3d(
    work: Path, dsn: str, weed: SeaweedServer, key: SecretKey, token: str, nar_mode: str, *, uvloop: bool = False
) -> tuple[list[str], str]:
    """The argv of a daemon (config written to ``work``) and its URL."""
    port = free_port()
    settings = {
        "server": {"listen": [f"127.0.0.1:{port}"], "nar_mode": nar_mode},
        "database": {"url": dsn},
        "s3": {
            "bucket": BUCKET,
            "endpoint_url": weed.endpoint_url,
            "addressing_style": "path",
            "access_key_id_file": _secret(work / "s3-id", weed.access_key_id),
            "secret_access_key_file": _secret(work / "s3-secret", weed.secret_access_key),
        },
        "signing": {"key_files": [_secret(work / "signing-key", key.to_text())]},
        "tokens": [{"name": "bench", "file": _secret(work / "token", token), "scopes": ["push", "read"]}],
        "logging": {"level": "warning", "format": "text"},
    }
    config = work / f"niks3d-{nar_mode}-{port}.toml"
    config.write_text(tomli_w.dumps(settings))
    start = "import uvloop; uvloop.install(); " if uvloop else ""
    argv = [sys.executable, "-c", start + "from niks3d.cli.main import main; raise SystemExit(main())"]
    return [*argv, "serve", "--config", str(config)], f"http://127.0.0.1:{port}"


def nginx(work: Path, root: Path) -> tuple[list[str], str]:
    port = free_port()
    conf = work / "nginx.conf"
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar zst; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return [binary, "-c", str(conf), "-p", str(work)], f"http://127.0.0.1:{port}"


def mirror(weed: SeaweedServer, root: Path) -> dict[str, int]:
    """Copy every object of the bucket into ``root``; their sizes by key."""
    client = weed.client()
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            path = root / item["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
            sizes[item["Key"]] = item["Size"]
    client.close()
    return sizes


def _median(measure: Callable[[], float], repeat: int) -> float:
    return statistics.median(measure() for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=300)
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="also run a daemon on uvloop (must be importable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-read-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        print(f"building a closure of {args.paths} paths, {args.mib} MiB ...", file=sys.stderr)
        closure = make_closure(work, f"bench-read-{args.paths}-{args.mib}", args.paths, args.mib << 20)
        pg = stack.enter_context(postgres_server(work / "pg"))
        weed = stack.enter_context(seaweed_server(work / "weed", anonymous_read=True))
        weed.create_bucket(BUCKET)
        key, token = SecretKey.generate("bench-1"), secrets.token_hex(24)
        servers: dict[str, str] = {}
        variants = [("stream", False), ("redirect", False)] + ([("stream", True)] if args.uvloop else [])
        for mode, uv in variants:
            name = f"niks3d proxy ({mode}{', uvloop' if uv else ''})"
            daemon_argv, servers[name] = niks3d(work, pg.dsn, weed, key, token, mode, uvloop=uv)
            log = work / f"niks3d-{len(servers)}.log"
            stack.enter_context(running(daemon_argv, servers[name] + "/ready", "niks3d", log))
        _secret(work / "token-file", token)
        print("pushing ...", file=sys.stderr)
        pushed = niks3_main(
            [
                "push",
                "--quiet",
                closure[0],
                "--server",
                servers["niks3d proxy (stream)"],
                "--token-file",
                str(work / "token-file"),
            ]
        )
        if pushed != 0:
            raise SystemExit("niks3 push failed")
        root = work / "www"
        work.chmod(0o755)  # nginx's workers run as nobody
        sizes = mirror(weed, root)
        nginx_argv, servers["nginx (files)"] = nginx(work, root)
        stack.enter_context(
            running(nginx_argv, servers["nginx (files)"] + "/nix-cache-info", "nginx", work / "nginx.log")
        )
        servers["S3 server (direct)"] = f"{weed.endpoint_url}/{BUCKET}"

        narinfos = sorted(k for k in sizes if k.endswith(".narinfo"))
        nars = sorted((k, s) for k, s in sizes.items() if k.startswith("nar/"))
        nar_mib = sum(s for _, s in nars) / (1 << 20)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{len(narinfos)} narinfos, {len(nars)} NARs, {nar_mib:.0f} MiB of NARs; loopback, {os.cpu_count()} CPUs")
        print(f"load average before: {load} (other work on the machine skews every figure)")
        print()
        print("| server | narinfo median | narinfo p90 | NARs, 1 worker | 4 workers | 16 workers |")
        print("|---|---|---|---|---|---|")
        for name, base in servers.items():
            prefix = urlsplit(base).path
            info_targets = [f"{prefix}/{k}" for k in narinfos]
            lat = [narinfo_latency(base, info_targets, args.rounds) for _ in range(args.repeat)]
            median = statistics.median(m for m, _ in lat)
            p90 = statistics.median(p for _, p in lat)
            nar_targets = [(f"{prefix}/{k}", s) for k, s in nars]
            times = [_median(lambda w=w, b=base, t=nar_targets: download_all(b, t, w), args.repeat) for w in WORKERS]
            cells = [f"{t:.2f} s ({nar_mib / t:.0f} MiB/s)" for t in times]
            print(f"| {name} | {median * 1e6:.0f} µs | {p90 * 1e6:.0f} µs | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
