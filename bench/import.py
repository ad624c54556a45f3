"""Benchmark: ``niks3d import`` of a synthetic bucket (default 20,000 store paths; ``--paths 100000`` for the
figures in docs/operations.md).

A throwaway PostgreSQL (default durability: fsync on) and SeaweedFS are started; the bucket gets ``--paths``
narinfos in a reference DAG, as many small NAR objects and a listing for every other path
(``testkit.synthbucket``). Then ``niks3d import --json`` runs as a child process, twice (the second run
finds everything registered); the figures are its wall time, its own phase timings and its peak resident memory
(VmHWM, read by the child itself), and the CPU seconds of the import, of SeaweedFS and of PostgreSQL (its
postmaster and backends) while it ran, read from /proc: wall time depends on what else the machine runs.

Writing the bucket takes longer than importing it (100,000 paths are 250,000 objects, about 1 ms of SeaweedFS
CPU each). ``--reuse DIR`` keeps SeaweedFS in ``DIR`` and its buckets there, one per ``--paths``
(``bench-import-N``), recorded in ``DIR/buckets.json`` once complete; a later run with the same DIR and
``--paths`` imports the bucket written earlier, and an interrupted write is continued where it stopped.

    .venv/bin/python -m bench.import [--paths 20000] [--batch-size 1000] [--keep DIR] [--reuse DIR]
                                     [--compare-reads]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import json
import resource
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
from testkit.proctree import process_tree
from testkit.synthbucket import write_synth_bucket

BUCKET = "bench-import"
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def show(label: str, report: dict[str, Any], seconds: float, rss_kib: int) -> None:
    c = report["counts"]
    timing = ", ".join(f"{k[:-3]} {v / 1000:.1f}s" for k, v in c.items() if k.endswith("_ms"))
    print(f"{label}: {seconds:.1f}s wall, peak RSS {rss_kib / 1024:.0f} MiB; {timing}")
    print(f"  counts: { {k: v for k, v in c.items() if not k.endswith('_ms')} }")


def _cpu(pid: int) -> float:
    return sum(p.cpu_seconds for p in process_tree(pid))


def timed_import(config: Path, extra: list[str], weed: Any, pg: Any) -> tuple[dict[str, Any], float, int]:
    """``niks3d import`` as a child; also prints the CPU seconds it, SeaweedFS and PostgreSQL used meanwhile
    (the child's from getrusage once reaped; the servers' from /proc, their reaped children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    weed0, pg0 = _cpu(weed.pid), _cpu(pg.pid)
    report, seconds, rss = run_niks3d(config, "import", *extra)
    time.sleep(0.5)  # the import's backend exits after the child does; the postmaster reaps it
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    weed_cpu, pg_cpu = _cpu(weed.pid) - weed0, _cpu(pg.pid) - pg0
    print(
        f"  CPU: import {own:.1f}s, SeaweedFS {weed_cpu:.1f}s, PostgreSQL {pg_cpu:.1f}s "
        f"(sum {own + weed_cpu + pg_cpu:.1f}s in {seconds:.1f}s wall); load {_load()}"
    )
    return report, seconds, rss


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def fill(weed: Any, name: str, paths: int) -> int:
    """Write the synthetic bucket ``name``, or what an interrupted write left out of it."""
    settings = S3Settings(bucket=name, endpoint_url=weed.endpoint_url, region=weed.region)
    async with open_bucket(settings, weed.access_key_id, weed.secret_access_key) as bucket:
        present = {info.key async for info in bucket.iter_objects()}
        if present:
            print(f"bucket: continuing a write that stopped after {len(present)} objects")
        return await write_synth_bucket(bucket, paths, present=present)


def the_bucket(weed: Any, name: str, paths: int, reuse: Path | None) -> int:
    """The bucket ``name`` with ``paths`` synthetic paths, written now unless ``reuse`` records it complete;
    returns its number of objects."""
    marker = reuse / "buckets.json" if reuse is not None else None
    written: dict[str, int] = json.loads(marker.read_text()) if marker is not None and marker.exists() else {}
    if name in written:
        print(f"bucket: {name} ({paths} paths, {written[name]} objects) written earlier, in {reuse}")
        return written[name]
    if name not in {b["Name"] for b in weed.client().list_buckets()["Buckets"]}:
        weed.create_bucket(name)
    t0 = time.monotonic()
    objects = asyncio.run(fill(weed, name, paths))
    print(f"bucket: {paths} paths, {objects} objects written in {time.monotonic() - t0:.0f}s; load {_load()}")
    if marker is not None:
        marker.write_text(json.dumps({**written, name: objects}))
    return objects


async def compare_reads(weed: Any, name: str, rounds: int = 2) -> None:
    """Read every narinfo with Bucket.get_many, through presigned GETs on aiohttp and through botocore alone,
    alternating (so both see the same load), and print GET/s of each."""
    settings = S3Settings(bucket=name, endpoint_url=weed.endpoint_url, region=weed.region)
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
    reuse = Path(args.reuse).absolute() if args.reuse else None
    name = f"{BUCKET}-{args.paths}"
    with (
        postgres_server(workdir / "pg", settings=DURABLE, keep=bool(args.keep)) as pg,
        seaweed_server(reuse / "s3" if reuse else workdir / "s3", keep=bool(args.keep), reuse=bool(reuse)) as weed,
    ):
        dsn = pg.create_database(f"bench_{secrets.token_hex(3)}")
        objects = the_bucket(weed, name, args.paths, reuse)
        config = write_config(workdir, dsn, weed, name, pool_max_size=4)
        extra = ["--batch-size", str(args.batch_size)]
        report, seconds, rss = timed_import(config, extra, weed, pg)
        show("import", report, seconds, rss)
        counts = report["counts"]
        if counts["paths_registered"] != args.paths or counts["bucket_objects"] != objects or report["problems"]:
            raise SystemExit(
                f"expected {args.paths} registered paths of {objects} objects and no problems: "
                f"{counts['paths_registered']} of {counts['bucket_objects']}, {report['problems'][:5]}"
            )
        show("second import, nothing to do", *timed_import(config, extra, weed, pg))
        if args.compare_reads:
            asyncio.run(compare_reads(weed, name))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--reuse", metavar="DIR", help="keep SeaweedFS and its buckets in DIR for the next run")
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
