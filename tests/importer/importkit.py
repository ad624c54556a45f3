"""What the import and fsck tests share: a bucket written by the real ``nix copy --to file://``, copied into
SeaweedFS object by object; ``niks3d import`` / ``niks3d fsck`` as subprocesses; table snapshots."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.signing import SecretKey
from tests.e2e.gcchecks import BucketState
from tests.fixtures.daemon import niks3d_argv
from tests.server.bucketview import s3_client

NIX = ["nix", "--extra-experimental-features", "nix-command"]


def nix_copy_to_file(directory: Path, paths: list[str], key_file: Path, compression: str) -> None:
    """``nix copy --to file://DIR?compression=..&write-nar-listing=1&secret-key=..`` (the client signs)."""
    url = f"file://{directory}?compression={compression}&write-nar-listing=1&secret-key={key_file}"
    done = subprocess.run([*NIX, "copy", "--to", url, *paths], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def old_cache_key(tmp_path: Path) -> tuple[SecretKey, Path]:
    key = SecretKey.generate("old-cache-1")
    path = tmp_path / "old-cache.sec"
    path.write_text(key.to_text())
    return key, path


def upload_directory(s3: Any, directory: Path) -> list[str]:
    """Copy every file of ``directory`` into the bucket under its relative path, one PutObject each."""
    client = s3_client(s3)
    keys = []
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = file.relative_to(directory).as_posix()
        client.put_object(Bucket=s3.bucket, Key=key, Body=file.read_bytes())
        keys.append(key)
    return keys


def niks3d(config: Path, *args: str, timeout: float = 300) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``niks3d ARGS --config CONFIG --json``; returns (exit code, the JSON report, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIKS3_", "NOTIFY_"))}
    done = subprocess.run(
        niks3d_argv(*args, "--config", str(config), "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    try:
        report = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    return done.returncode, report, done.stderr + done.stdout


TABLES = {
    "store_paths": "SELECT hash, name, nar_hash, nar_size, nar_key, narinfo_key, compression, file_hash, file_size,"
    " deriver, ca, narinfo FROM store_paths",
    "path_references": "SELECT referrer, reference FROM path_references",
    "path_files": "SELECT hash, key, kind FROM path_files",
    "objects": "SELECT key, kind, state, size, file_hash FROM objects WHERE state = 'present'",
}


async def snapshot(dsn: str, tables: dict[str, str] = TABLES) -> dict[str, set[tuple[Any, ...]]]:
    """The rows of what the cache publishes, as sets (dates and sessions left out)."""
    conn = await asyncpg.connect(dsn)
    try:
        return {name: {tuple(r) for r in await conn.fetch(query)} for name, query in tables.items()}
    finally:
        await conn.close()


def cache_state(s3: Any) -> BucketState:
    """``bucket_state`` of the cache's own keys: ``quarantine/`` (where import moves broken narinfos) left out."""
    client = s3_client(s3)
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        sizes.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    narinfos = {
        key[:32]: parse_narinfo(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read(), expected_hash=key[:32])
        for key in sizes
        if key.endswith(".narinfo") and "/" not in key
    }
    return BucketState(sizes, narinfos)


def wait_for_paths(dsn: str, target: int, proc: subprocess.Popen[bytes]) -> None:
    """Return once ``target`` paths are registered, or once ``proc`` (an import) has exited."""

    async def wait() -> None:
        while proc.poll() is None:
            try:
                conn = await asyncpg.connect(dsn)
                try:
                    if await conn.fetchval("SELECT count(*) FROM store_paths") >= target:
                        return
                finally:
                    await conn.close()
            except asyncpg.UndefinedTableError:
                pass
            await asyncio.sleep(0.01)

    asyncio.run(wait())
