"""Benchmark: ``niks3d import`` of a synthetic bucket (default 20,000 store paths; ``--paths 100000`` for the
figures in docs/operations.md).

A throwaway PostgreSQL (default durability: fsync on) and SeaweedFS are started; the bucket gets ``--paths``
narinfos in a reference DAG, as many small NAR objects and a listing for every other path
(``niks3d.devenv.synthbucket``). Then ``niks3d import --json`` runs as a child process, twice (the second run
finds everything registered); the figures are its wall time, its own phase timings and its peak resident memory
(VmHWM, read by the child itself).

    .venv/bin/python bench/import.py [--paths 20000] [--batch-size 1000] [--keep DIR]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from niks3d.config import S3Settings
from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.seaweedfs import seaweed_server
from niks3d.devenv.synthbucket import write_synth_bucket
from niks3d.nix.signing import SecretKey
from niks3d.storage import open_bucket

BUCKET = "bench-import"
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
_CHILD = (
    "import re, sys\n"
    "from niks3d.cli.main import main\n"
    "code = main()\n"
    "status = open('/proc/self/status').read()\n"
    "print('maxrss', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


def write_config(workdir: Path, dsn: str, weed: Any) -> Path:
    secret_dir = workdir / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)

    def secret(name: str, text: str) -> str:
        path = secret_dir / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    settings = {
        "database": {"url": dsn, "pool_max_size": 4},
        "s3": {
            "bucket": BUCKET,
            "endpoint_url": weed.endpoint_url,
            "region": weed.region,
            "addressing_style": "path",
            "access_key_id_file": secret("access", weed.access_key_id),
            "secret_access_key_file": secret("secret", weed.secret_access_key),
        },
        "signing": {"key_files": [secret("key", SecretKey.generate("bench-1").to_text())]},
        "logging": {"level": "warning", "format": "text"},
    }
    path = workdir / "niks3d.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


def run_import(config: Path, *extra: str) -> tuple[dict[str, Any], float, int]:
    argv = [sys.executable, "-c", _CHILD, "import", "-c", str(config), "--json", *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"niks3d import failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return json.loads(proc.stdout), seconds, rss


def show(label: str, report: dict[str, Any], seconds: float, rss_kib: int) -> None:
    c = report["counts"]
    timing = ", ".join(f"{k[:-3]} {v / 1000:.1f}s" for k, v in c.items() if k.endswith("_ms"))
    print(f"{label}: {seconds:.1f}s wall, peak RSS {rss_kib / 1024:.0f} MiB; {timing}")
    print(f"  counts: { {k: v for k, v in c.items() if not k.endswith('_ms')} }")


async def fill(weed: Any, paths: int) -> int:
    settings = S3Settings(bucket=BUCKET, endpoint_url=weed.endpoint_url, region=weed.region)
    async with open_bucket(settings, weed.access_key_id, weed.secret_access_key) as bucket:
        return await write_synth_bucket(bucket, paths)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    with (
        postgres_server(workdir / "pg", settings=DURABLE, keep=bool(args.keep)) as pg,
        seaweed_server(workdir / "s3", keep=bool(args.keep)) as weed,
    ):
        dsn = pg.create_database(f"bench_{secrets.token_hex(3)}")
        weed.create_bucket(BUCKET)
        t0 = time.monotonic()
        objects = asyncio.run(fill(weed, args.paths))
        print(f"bucket: {args.paths} paths, {objects} objects written in {time.monotonic() - t0:.0f}s")
        config = write_config(workdir, dsn, weed)
        extra = ["--batch-size", str(args.batch_size)]
        report, seconds, rss = run_import(config, *extra)
        show("import", report, seconds, rss)
        if report["counts"]["paths_registered"] != args.paths or report["problems"]:
            raise SystemExit(f"expected {args.paths} registered paths and no problems: {report['problems'][:5]}")
        show("second import, nothing to do", *run_import(config, *extra))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, workdir)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-import-") as tmp:
        return bench(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
