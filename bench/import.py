"""Benchmark: ``niks3d import`` of a synthetic bucket (default 20,000 store paths; ``--paths 100000`` for the
figures in docs/operations.md).

A throwaway PostgreSQL (default durability: fsync on) and SeaweedFS are started; the bucket gets ``--paths``
narinfos in a reference DAG, as many small NAR objects and a listing for every other path
(``testkit.synthbucket``). Then ``niks3d import --json`` runs as a child process, twice (the second run
finds everything registered); the figures are its wall time, its own phase timings and its peak resident memory
(VmHWM, read by the child itself).

    .venv/bin/python -m bench.import [--paths 20000] [--batch-size 1000] [--keep DIR] [--compare-reads]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchkit import run_niks3d, write_config
from niks3d.config import S3Settings
from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.seaweedfs import seaweed_server
from niks3d.storage import open_bucket
from testkit.synthbucket import write_synth_bucket

BUCKET = "bench-import"
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def show(label: str, report: dict[str, Any], seconds: float, rss_kib: int) -> None:
    c = report["counts"]
    timing = ", ".join(f"{k[:-3]} {v / 1000:.1f}s" for k, v in c.items() if k.endswith("_ms"))
    print(f"{label}: {seconds:.1f}s wall, peak RSS {rss_kib / 1024:.0f} MiB; {timing}")
    print(f"  counts: { {k: v for k, v in c.items() if not k.endswith('_ms')} }")


async def fill(weed: Any, paths: int) -> int:
    settings = S3Settings(bucket=BUCKET, endpoint_url=weed.endpoint_url, region=weed.region)
    async with open_bucket(settings, weed.access_key_id, weed.secret_access_key) as bucket:
        return await write_synth_bucket(bucket, paths)


async def compare_reads(weed: Any, rounds: int = 2) -> None:
    """Read every narinfo with Bucket.get_many, through presigned GETs on aiohttp and through botocore alone,
    alternating (so both see the same load), and print GET/s of each."""
    settings = S3Settings(bucket=BUCKET, endpoint_url=weed.endpoint_url, region=weed.region)
    async with open_bucket(settings, weed.access_key_id, weed.secret_access_key) as bucket:
        keys = [info.key async for info in bucket.iter_objects() if info.key.endswith(".narinfo")]
        http = bucket._http
        rates: dict[str, list[float]] = {"aiohttp": [], "botocore": []}
        for _ in range(rounds):
            for way in rates:
                bucket._http = http if way == "aiohttp" else None
                t0 = time.monotonic()
                got = await bucket.get_many(keys)
                assert all(got.values()), "a narinfo was not read"
                rates[way].append(len(keys) / (time.monotonic() - t0))
        bucket._http = http
    print("reading narinfos: " + ", ".join(f"{w} {' '.join(f'{r:.0f}' for r in v)} GET/s" for w, v in rates.items()))


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
        config = write_config(workdir, dsn, weed, BUCKET, pool_max_size=4)
        extra = ["--batch-size", str(args.batch_size)]
        report, seconds, rss = run_niks3d(config, "import", *extra)
        show("import", report, seconds, rss)
        if report["counts"]["paths_registered"] != args.paths or report["problems"]:
            raise SystemExit(f"expected {args.paths} registered paths and no problems: {report['problems'][:5]}")
        show("second import, nothing to do", *run_niks3d(config, "import", *extra))
        if args.compare_reads:
            asyncio.run(compare_reads(weed))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument(
        "--compare-reads", action="store_true", help="then time get_many with and without the aiohttp path"
    )
    args = parser.parse_args(argv)
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, workdir)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-import-") as tmp:
        return bench(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
