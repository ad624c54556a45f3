"""Benchmark: the read path of niks3d's proxy against the S3 server itself and nginx serving the same files.

One run builds (or finds) a closure of ``--paths`` store paths holding about ``--mib`` MiB of random data in
all, pushes it with ``niks3 push`` to a throwaway niks3d (PostgreSQL and SeaweedFS from niks3d.devenv),
mirrors the bucket into a directory for nginx, and measures for each server:

- narinfo latency: every narinfo of the closure, ``--rounds`` times, one request after the other on one
  keep-alive connection (what one Nix client's queries cost); the median and the 90th percentile;
- the time to download every NAR with 1, 4 and 16 workers, each with its own keep-alive connection.

The servers: niks3d's proxy streaming NARs (``nar_mode = "stream"``) and redirecting them to presigned URLs
(``"redirect"``, the redirect followed to S3 as Nix does), the S3 server read directly (anonymous GETs, as Nix
reads a public bucket; and with presigned GETs, as a reader of a private bucket must, which is what niks3d's
proxy does), nginx serving the files from a directory, and nginx as a reverse proxy in front of the
same S3 server (keep-alive upstream connections): what a proxy written in C costs on the same machine, the
reference for niks3d's streaming mode (nginx is ``nginx-light`` from Debian; not needed by the test suite).
The client is a minimal HTTP/1.1 client on raw sockets, the same for every server. Each figure is the median
of ``--repeat`` runs. Every body is checked against the object's size in the bucket.

Narinfo latency is measured with three placements, because on a virtual machine waking a process on another
CPU costs tens of microseconds, as much as answering the request: "1 CPU" pins the server's processes and the
client to the first CPU (the figure is then the CPU the request costs, client and kernel included), "2 CPUs"
pins them to different CPUs (a wake-up across CPUs on every request, as for a client on the network), and
"free" leaves the placement to the scheduler (which moves processes between the two, so it is the noisiest).

    .venv/bin/python -m bench.read [--paths 300] [--mib 300] [--rounds 5] [--repeat 3] [--asyncio]

The daemons run on uvloop, as ``niks3d serve`` does; ``--asyncio`` adds a streaming daemon on the standard
event loop (``NIKS3_EVENT_LOOP=asyncio``) for comparison.
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from niks3d.client.main import main as niks3_main
from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.process import free_port
from niks3d.devenv.seaweedfs import SeaweedServer, seaweed_server
from niks3d.nix.signing import SecretKey
from testkit.nixfixtures import make_closure
from testkit.proctree import process_tree

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
def running(
    argv: list[str], url: str, what: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_http(url, process, what, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def niks3d(
    work: Path, dsn: str, weed: SeaweedServer, key: SecretKey, token: str, nar_mode: str
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
    argv = [sys.executable, "-c", "from niks3d.cli.main import main; raise SystemExit(main())"]
    return [*argv, "serve", "--config", str(config)], f"http://127.0.0.1:{port}"


def nginx(work: Path, root: Path, upstream: str | None = None) -> tuple[list[str], str]:
    """nginx serving ``root``, or (with ``upstream``, ``http://host:port/bucket``) proxying to the S3 server."""
    port = free_port()
    name = "nginx-proxy" if upstream else "nginx"
    conf = work / f"{name}.conf"
    temp = work / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    if upstream:
        parts = urlsplit(upstream)
        serve = (
            f"location / {{ proxy_pass http://s3{parts.path}/; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_buffers 16 64k; }'
        )
        upstreams = f"upstream s3 {{ server {parts.netloc}; keepalive 64; }}"
    else:
        serve, upstreams = f"root {root};", ""
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {work}/{name}.pid; error_log {work}/{name}-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar zst; }}
  {upstreams}
  server {{ listen 127.0.0.1:{port}; {serve} }}
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


def presigner(weed: SeaweedServer) -> Callable[[str], str]:
    """Presigned GET targets (path and query) for the bucket's keys, valid for an hour."""
    client = weed.client()

    def sign(key: str) -> str:
        url = urlsplit(client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}))
        return f"{url.path}?{url.query}"

    return sign


def _median(measure: Callable[[], float], repeat: int) -> float:
    return statistics.median(measure() for _ in range(repeat))


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Restrict every thread of ``pids`` to ``cpus``."""
    for pid in pids:
        try:
            threads = [entry.name for entry in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                continue


def placements(server_pids: list[int]) -> Iterator[str]:
    """Yield each placement's name with the server (``server_pids`` and their children) and this thread placed."""
    everything = set(range(os.cpu_count() or 1))
    processes = [p.pid for root in server_pids for p in process_tree(root)]
    yield "free"
    if len(everything) < 2:
        return
    try:
        for name, client in (("1 CPU", {0}), ("2 CPUs", {1})):
            pin(processes, {0})
            os.sched_setaffinity(0, client)
            yield name
    finally:
        pin(processes, everything)
        os.sched_setaffinity(0, everything)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=300)
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--asyncio", action="store_true", help="also run a daemon on the standard event loop")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-read-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        print(f"building a closure of {args.paths} paths, {args.mib} MiB ...", file=sys.stderr)
        closure = make_closure(work, f"bench-read-{args.paths}-{args.mib}", args.paths, args.mib << 20)
        pg = stack.enter_context(postgres_server(work / "pg"))
        weed = stack.enter_context(seaweed_server(work / "weed", anonymous_read=True))
        weed.create_bucket(BUCKET)
        key, token = SecretKey.generate("bench-1"), secrets.token_hex(24)
        servers: dict[str, tuple[str, list[int], Callable[[str], str] | None]] = {}
        variants = [("stream", "uvloop"), ("redirect", "uvloop")] + ([("stream", "asyncio")] if args.asyncio else [])
        for mode, loop in variants:
            name = f"niks3d proxy ({mode}{', asyncio loop' if loop == 'asyncio' else ''})"
            daemon_argv, url = niks3d(work, pg.dsn, weed, key, token, mode)
            log = work / f"niks3d-{len(servers)}.log"
            env = {**os.environ, "NIKS3_EVENT_LOOP": loop}
            process = stack.enter_context(running(daemon_argv, url + "/ready", "niks3d", log, env))
            servers[name] = (url, [process.pid], None)
        stream_url = servers["niks3d proxy (stream)"][0]
        _secret(work / "token-file", token)
        print("pushing ...", file=sys.stderr)
        pushed = niks3_main(
            ["push", "--quiet", closure[0], "--server", stream_url, "--token-file", str(work / "token-file")]
        )
        if pushed != 0:
            raise SystemExit("niks3 push failed")
        root = work / "www"
        work.chmod(0o755)  # nginx's workers run as nobody
        sizes = mirror(weed, root)
        s3_url = f"{weed.endpoint_url}/{BUCKET}"
        for name, upstream in (("nginx (files)", None), ("nginx (proxy to S3)", s3_url)):
            nginx_argv, url = nginx(work, root, upstream)
            log = work / f"{name.split()[1].strip('()')}.log"
            process = stack.enter_context(running(nginx_argv, url + "/nix-cache-info", "nginx", log))
            servers[name] = (url, [process.pid], None)
        servers["S3 server (direct)"] = (s3_url, [weed.pid], None)
        servers["S3 server (direct, presigned)"] = (s3_url, [weed.pid], presigner(weed))

        narinfos = sorted(k for k in sizes if k.endswith(".narinfo"))
        nars = sorted((k, s) for k, s in sizes.items() if k.startswith("nar/"))
        nar_mib = sum(s for _, s in nars) / (1 << 20)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{len(narinfos)} narinfos, {len(nars)} NARs, {nar_mib:.0f} MiB of NARs; loopback, {os.cpu_count()} CPUs")
        print(f"load average before: {load} (other work on the machine skews every figure)")
        print()
        print("| server | narinfo, 1 CPU | 2 CPUs | free | p90 (free) | NARs, 1 worker | 4 workers | 16 workers |")
        print("|---|---|---|---|---|---|---|---|")
        latency: dict[tuple[str, str], float] = {}
        downloads: dict[tuple[str, int], float] = {}
        for name, (base, pids, sign) in servers.items():
            prefix = urlsplit(base).path
            target = sign or (lambda key, prefix=prefix: f"{prefix}/{key}")
            info_targets = [target(k) for k in narinfos]
            p90 = 0.0
            for placement in placements(pids):
                lat = [narinfo_latency(base, info_targets, args.rounds) for _ in range(args.repeat)]
                latency[name, placement] = statistics.median(m for m, _ in lat)
                if placement == "free":
                    p90 = statistics.median(p for _, p in lat)
            nar_targets = [(target(k), s) for k, s in nars]
            for w in WORKERS:
                downloads[name, w] = _median(lambda w=w, b=base, t=nar_targets: download_all(b, t, w), args.repeat)
            cells = [f"{latency.get((name, p), float('nan')) * 1e6:.0f} µs" for p in ("1 CPU", "2 CPUs", "free")]
            cells.append(f"{p90 * 1e6:.0f} µs")
            cells += [f"{downloads[name, w]:.2f} s ({nar_mib / downloads[name, w]:.0f} MiB/s)" for w in WORKERS]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        print()
        ours, files, s3 = "niks3d proxy (stream)", "nginx (files)", "S3 server (direct)"
        shown = [p for p in ("1 CPU", "2 CPUs", "free") if (ours, p) in latency]
        print(
            "narinfo latency, niks3d / nginx (target <= 1.5x): "
            + ", ".join(f"{p} {_ratio(latency[ours, p], latency[files, p])}" for p in shown)
        )
        print(
            "narinfo latency, niks3d / S3 server (target < 1): "
            + ", ".join(f"{p} {_ratio(latency[ours, p], latency[s3, p])}" for p in shown)
        )
        for name in (ours, "niks3d proxy (redirect)", "nginx (proxy to S3)"):
            for direct in (s3, "S3 server (direct, presigned)"):
                print(
                    f"NAR downloads, {name} / {direct} (target <= 1.2x for niks3d): "
                    + ", ".join(f"{w} {_ratio(downloads[name, w], downloads[direct, w])}" for w in WORKERS)
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
