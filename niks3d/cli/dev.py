"""``niks3d dev``: a working cache in one command, for trying niks3d out.

It starts a throwaway PostgreSQL and a SeaweedFS S3 server (the same harness the tests use), creates a bucket
that Nix may read anonymously, generates a signing key and a push token, writes a config, runs the daemon, and
prints how to push to it and how to point Nix at it. Ctrl-C stops everything; the directory is removed unless
``--dir`` or ``--keep`` was given.

It watches its children: if PostgreSQL or SeaweedFS dies, it says which one and how (with the tail of its log),
reaps it, removes PostgreSQL's stale ``postmaster.pid``, stops the daemon and exits with status 1, rather than
serving 503s from a cache that cannot recover by itself.
"""

from __future__ import annotations

__all__ = ["dev_command", "run_dev"]

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import tomli_w

from niks3d import eventloop
from niks3d.cli.serve import serve
from niks3d.config import load_config
from niks3d.devenv.postgres import async_postgres_server
from niks3d.devenv.seaweedfs import async_seaweed_server
from niks3d.errors import ServiceError
from niks3d.logsetup import setup_logging
from niks3d.nix.signing import SecretKey

logger = logging.getLogger(__name__)

BUCKET = "nix-cache"
KEY_NAME = "niks3d-dev-1"
# How often the children are checked.
WATCH_PERIOD = 0.5


class _Child(Protocol):
    def check_alive(self) -> None: ...


async def _watch(children: dict[str, _Child]) -> None:
    """Return never; raise ServiceError as soon as one of ``children`` has died (checking reaps it)."""
    while True:
        await asyncio.sleep(WATCH_PERIOD)
        for name, child in children.items():
            try:
                child.check_alive()
            except ServiceError as exc:
                raise ServiceError(f"{name} died; niks3d dev stops. {exc}") from exc


def _write_secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


@contextlib.contextmanager
def _workdir(requested: str | None, keep: bool) -> Iterator[Path]:
    if requested:
        path = Path(requested).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="niks3d-dev-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def _instructions(server_url: str, cache_url: str, public_key: str, token_file: Path, config_file: Path) -> str:
    return f"""
niks3d dev is running.

  API (push here):  {server_url}
  cache (Nix reads): {cache_url}
  public key:       {public_key}
  push token file:  {token_file}
  config:           {config_file}

Push a build result:
  export NIKS3_SERVER_URL={server_url} NIKS3_TOKEN_FILE={token_file}
  niks3 push ./result

Substitute from it (nix.conf, or pass each line as --option NAME VALUE):
  extra-substituters = {cache_url}
  extra-trusted-public-keys = {public_key}

Press Ctrl-C to stop.
"""


async def run_dev(workdir: Path, port: int, *, ready: asyncio.Event | None = None, trusted_token: bool = False) -> None:
    async with (
        async_postgres_server(workdir / "postgres") as pg,
        async_seaweed_server(workdir / "s3", anonymous_read=True) as s3,
    ):
        dsn = await asyncio.to_thread(pg.create_database, "niks3")
        await asyncio.to_thread(s3.create_bucket, BUCKET)
        secrets_dir = workdir / "secrets"
        key = SecretKey.generate(KEY_NAME)
        key_file = _write_secret(secrets_dir / "signing-key", key.to_text())
        token_file = _write_secret(secrets_dir / "push-token", secrets.token_urlsafe(32))
        access_file = _write_secret(secrets_dir / "s3-access-key-id", s3.access_key_id)
        secret_file = _write_secret(secrets_dir / "s3-secret-access-key", s3.secret_access_key)
        server_url = f"http://127.0.0.1:{port}"
        settings = {
            "server": {"listen": [f"127.0.0.1:{port}"], "public_url": server_url},
            "database": {"url": dsn},
            "s3": {
                "bucket": BUCKET,
                "endpoint_url": s3.endpoint_url,
                "region": s3.region,
                "addressing_style": "path",
                "access_key_id_file": str(access_file),
                "secret_access_key_file": str(secret_file),
            },
            "signing": {"key_files": [str(key_file)]},
            "tokens": [{"name": "dev", "file": str(token_file), "scopes": ["admin"], "trusted": trusted_token}],
        }
        config_file = workdir / "niks3d.toml"
        config_file.write_text(tomli_w.dumps(settings))
        config = load_config(config_file)
        started = asyncio.Event()
        task = asyncio.create_task(serve(config, ready=started))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            await task  # raises the start-up error
            return
        print(
            _instructions(
                server_url, f"{s3.endpoint_url}/{BUCKET}", key.public_key().to_text(), token_file, config_file
            ),
            flush=True,
        )
        if ready is not None:
            ready.set()
        watcher = asyncio.create_task(_watch({"PostgreSQL": pg, "SeaweedFS": s3}))
        try:
            await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, watcher):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
        if not watcher.cancelled() and watcher.exception() is not None:
            logger.error("%s", watcher.exception())
            await watcher  # raises the ServiceError
        await task


def dev_command(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", None) or "info", "text")
    port = args.port or 5751

    async def main() -> None:
        with _workdir(args.dir, args.keep) as workdir:
            await run_dev(workdir, port, trusted_token=getattr(args, "trusted_token", False))

    try:
        eventloop.run(main())
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0
