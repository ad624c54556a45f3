"""The servers of the push-cost benchmark (bench/pushcost.py), each a process whose CPU time is read apart.

* PostgreSQL with ``pg_stat_statements``: the statements niks3d runs are counted (``calls``);
* SeaweedFS (S3);
* ``niks3d serve`` as a child process, with two push tokens: ``bench`` (ordinary: every NAR verified) and
  ``trusted`` (size checks only: the per-path cost without the per-byte verification, docs/security.md);
* nginx, one process, four ports: a WebDAV directory (``nix copy --to http://``, the reference writer), and three
  counting proxies: the client's API calls to niks3d, the client's S3 requests (presigned PUTs, ``nix copy --to
  s3://``; niks3d's ``s3.public_endpoint_url``), and niks3d's own S3 requests (its ``s3.endpoint_url``). Its
  access log (port, method, status, request bytes, whether an ``Authorization`` header came, when it ended) gives
  requests made and bytes sent by every writer and by niks3d, how many were signed in headers (SigV4 ``nix copy
  --to s3://``; presigned URLs carry their signature in the query instead), and when each kind ended. The
  proxies cost nginx CPU, counted as nginx's; they do not buffer bodies.
"""

from __future__ import annotations

__all__ = ["Stack", "stack"]

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import tomli_w

from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.process import free_port
from niks3d.devenv.seaweedfs import seaweed_server
from niks3d.nix.signing import SecretKey
from testkit.proctree import process_tree

NIKS3D = [sys.executable, "-c", "from niks3d.cli.main import main; raise SystemExit(main())"]
BUCKET = "niks3"
NIX_BUCKET = "nixcopy"  # the bucket `nix copy --to s3://` writes

_NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    map $http_authorization $signed {{ "" 0; default 1; }}
    log_format counts '$server_port $request_method $status $request_length $body_bytes_sent $signed $msec';
    access_log {dir}/access.log counts;
    client_body_temp_path {dir}/body;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header Connection "";
    upstream niks3d {{ server 127.0.0.1:{niks3d}; keepalive 32; }}
    upstream s3 {{ server 127.0.0.1:{s3}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{webdav};
        root {dir}/webdav;
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
    server {{ listen 127.0.0.1:{api}; location / {{ proxy_pass http://niks3d; }} }}
    server {{ listen 127.0.0.1:{client_s3}; location / {{ proxy_pass http://s3; }} }}
    server {{ listen 127.0.0.1:{server_s3}; location / {{ proxy_pass http://s3; }} }}
}}
"""


@dataclass
class Counts:
    """A snapshot of everything counted: CPU seconds by process, statements, and requests/bytes by nginx port
    (``requests["<port>_signed"]``: those with an Authorization header)."""

    cpu: dict[str, float]
    statements: int
    requests: Counter[str] = field(default_factory=Counter)
    request_bytes: Counter[str] = field(default_factory=Counter)

    def __sub__(self, other: Counts) -> Counts:
        cpu = {k: v - other.cpu.get(k, 0.0) for k, v in self.cpu.items()}
        return Counts(cpu, self.statements - other.statements, self.requests - other.requests,
                      self.request_bytes - other.request_bytes)  # fmt: skip


@dataclass
class Stack:
    workdir: Path
    api_url: str  # niks3d through the counting proxy
    webdav_url: str
    client_s3: str  # host:port of the proxy for clients' S3 requests
    tokens: dict[str, Path]
    s3_keys: tuple[str, str]
    region: str
    pids: dict[str, int]
    dsn: str
    ports: dict[str, str]  # nginx port -> what it counts

    def _statements(self) -> int:
        async def query() -> int:
            conn = await asyncpg.connect(self.dsn)
            try:
                # this query counts itself once per snapshot: subtracted below
                return int(await conn.fetchval("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements") or 0)
            finally:
                await conn.close()

        return asyncio.run(query())

    def counts(self) -> Counts:
        cpu = {side: sum(p.cpu_seconds for p in process_tree(pid)) for side, pid in self.pids.items()}
        snapshot = Counts(cpu, self._statements())
        log = self.workdir / "nginx" / "access.log"
        with contextlib.suppress(FileNotFoundError), log.open() as lines:
            for line in lines:
                port, _method, _status, length, _sent, signed, _end = line.split()
                what = self.ports.get(port, port)
                snapshot.requests[what] += 1
                snapshot.requests[f"{what}_signed"] += int(signed)
                snapshot.request_bytes[what] += int(length)
        return snapshot

    def ends(self, since: float) -> dict[str, tuple[float, float]]:
        """By nginx port (what it counts): when the first and the last request that ended after ``since`` (a
        ``time.time()``) ended, in seconds after ``since``."""
        spans: dict[str, tuple[float, float]] = {}
        with contextlib.suppress(FileNotFoundError), (self.workdir / "nginx" / "access.log").open() as lines:
            for line in lines:
                fields = line.split()
                end = float(fields[-1]) - since
                if end >= 0:
                    what = self.ports.get(fields[0], fields[0])
                    first, last = spans.get(what, (end, end))
                    spans[what] = (min(first, end), max(last, end))
        return spans

    def settle(self, *, quiet: float = 0.5, limit: float = 120.0) -> None:
        """Wait until nginx has written its log lines and niks3d's background work (verification, publication)
        is done: 1 s, then until niks3d has used under 20 ms of CPU and made no S3 request for ``quiet`` seconds
        (at most ``limit``), so that what a push left running is counted in its own line, not in the next one's
        (a cached re-push of 10,000 paths after the first push showed 0.15 S3 requests per path by niks3d)."""
        time.sleep(1.0)
        deadline = time.monotonic() + limit
        before = self._activity()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._activity()
            if now[1] == before[1] and now[0] - before[0] < 0.02:
                return
            before = now

    def _activity(self) -> tuple[float, int]:
        """niks3d's CPU seconds, and how many S3 requests it has made (lines of its S3 proxy's log)."""
        cpu = sum(p.cpu_seconds for p in process_tree(self.pids["niks3d"]))
        port = next(port for port, what in self.ports.items() if what == "server_s3")
        with contextlib.suppress(FileNotFoundError), (self.workdir / "nginx" / "access.log").open() as lines:
            return cpu, sum(1 for line in lines if line.startswith(f"{port} "))
        return cpu, 0


def _secret(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def _wait_http(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)


def _warm(s3: Any, buckets: tuple[str, ...]) -> None:
    """One object written and deleted in each bucket, so that no measured writer pays for SeaweedFS's first
    volumes: measured with weed 4.48, the first PUT to a fresh server took 5 s (its first volume growth), the
    first to each further bucket (a collection of its own) 0.2 s, and the next ones 3 to 9 ms."""
    for bucket in buckets:
        s3.put_object(Bucket=bucket, Key="warm-up", Body=b"warm-up")
        s3.delete_object(Bucket=bucket, Key="warm-up")


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """Start everything (see the module doc); stop it all at the end."""
    settings = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
    with (
        postgres_server(workdir / "postgres", settings=settings) as pg,
        seaweed_server(workdir / "s3", anonymous_read=True, anonymous_write=[NIX_BUCKET]) as weed,
    ):
        dsn = pg.create_database("niks3")

        async def extension() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()

        asyncio.run(extension())
        weed.create_bucket(BUCKET)
        weed.create_bucket(NIX_BUCKET)
        _warm(weed.client(), (BUCKET, NIX_BUCKET))
        s3_port = int(weed.endpoint_url.rsplit(":", 1)[1])
        ports = {name: free_port() for name in ("niks3d", "webdav", "api", "client_s3", "server_s3")}
        nginx_dir = workdir / "nginx"
        (nginx_dir / "webdav").mkdir(parents=True)
        conf = nginx_dir / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=nginx_dir, s3=s3_port, **ports))
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise SystemExit("nginx is not installed: apt-get install nginx-light")
        secret_dir = workdir / "secrets"
        tokens = {n: _secret(secret_dir, f"token-{n}", secrets.token_urlsafe(32)) for n in ("bench", "trusted")}
        api_url = f"http://127.0.0.1:{ports['api']}"
        config = {
            "server": {"listen": [f"127.0.0.1:{ports['niks3d']}"], "public_url": api_url},
            "database": {"url": dsn, **json.loads(os.environ.get("NIKS3_BENCH_DATABASE", "{}"))},
            "s3": {
                "bucket": BUCKET,
                "endpoint_url": f"http://127.0.0.1:{ports['server_s3']}",
                "public_endpoint_url": f"http://127.0.0.1:{ports['client_s3']}",
                "region": weed.region,
                "addressing_style": "path",
                "access_key_id_file": str(_secret(secret_dir, "access", weed.access_key_id)),
                "secret_access_key_file": str(_secret(secret_dir, "secret", weed.secret_access_key)),
            },
            "signing": {"key_files": [str(_secret(secret_dir, "key", SecretKey.generate("bench-1").to_text()))]},
            "tokens": [
                {"name": "bench", "file": str(tokens["bench"]), "scopes": ["admin"]},
                {"name": "trusted", "file": str(tokens["trusted"]), "scopes": ["admin"], "trusted": True},
            ],
            "logging": {"level": "warning", "format": "text"},
        }
        config_file = workdir / "niks3d.toml"
        config_file.write_text(tomli_w.dumps(config))
        nginx_log = nginx_dir / "stderr.log"
        niks3d_log = workdir / "niks3d.log"
        with nginx_log.open("wb") as nlog, niks3d_log.open("wb") as dlog:
            nginx = subprocess.Popen([exe, "-c", str(conf), "-p", str(nginx_dir)], stdout=nlog, stderr=nlog)
            daemon = subprocess.Popen(
                [*NIKS3D, "serve", "-c", str(config_file)], stdout=dlog, stderr=dlog, env={**os.environ}
            )
        try:
            _wait_http(ports["webdav"], nginx, "nginx", nginx_log)
            _wait_http(ports["niks3d"], daemon, "niks3d serve", niks3d_log)
            yield Stack(
                workdir=workdir,
                api_url=api_url,
                webdav_url=f"http://127.0.0.1:{ports['webdav']}",
                client_s3=f"127.0.0.1:{ports['client_s3']}",
                tokens=tokens,
                s3_keys=(weed.access_key_id, weed.secret_access_key),
                region=weed.region,
                pids={"niks3d": daemon.pid, "SeaweedFS": weed.pid, "PostgreSQL": pg.pid, "nginx": nginx.pid},
                dsn=dsn,
                ports={
                    str(ports["webdav"]): "webdav",
                    str(ports["api"]): "api",
                    str(ports["client_s3"]): "client_s3",
                    str(ports["server_s3"]): "server_s3",
                },
            )
        finally:
            for proc in (daemon, nginx):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
