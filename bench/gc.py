"""Benchmark: one full garbage-collection run over a database of a million store paths.

A throwaway PostgreSQL (default durability settings: fsync and synchronous_commit on) and SeaweedFS are started,
and the database is filled with ``--paths`` store paths (default 1,000,000) in a shape like a busy cache: a shared
core (libc and friends, referenced by almost everything, preferentially the most popular ones), then
``--generations`` batches of builds (think nixpkgs revisions), whose paths reference core paths and earlier paths
of their own generation, sometimes the previous generation. Each path has a NAR, a listing, a narinfo with its
References line, a third have a build log, a few paths share NARs. About 1% of each generation are pushed roots;
old generations' roots are older than the retention window; a few old paths are pinned. Only a sample of the
objects is really in the bucket (``--sample``), plus some untracked objects and an abandoned multipart upload, so
every phase has work; deleting a key that is not there costs S3 the same request.

Then ``niks3d gc --json`` runs as a child process (a dry run first, then the real one); the figures are its own
phase timings (from the run's record) and its peak resident memory (``wait4``'s ru_maxrss).

    .venv/bin/python -m bench.gc [--paths 1000000] [--generations 20] [--sample 20000] [--keep DIR]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import hashlib
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.benchkit import run_niks3d, write_config
from niks3d.config import DatabaseSettings
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool
from niks3d.devenv.postgres import postgres_server
from niks3d.devenv.seaweedfs import seaweed_server
from niks3d.nix.nix32 import encode

BUCKET = "bench-cache"
CHUNK = 20_000
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
NOW = datetime.now(UTC)


@dataclass
class Graph:
    """Store paths by index: hash parts, names, references (indices), NAR index, published time, roots, pins."""

    hashes: list[str]
    names: list[str]
    refs: list[list[int]]
    nar_of: list[int]
    log: list[bool]
    published: list[datetime]
    roots: dict[int, datetime] = field(default_factory=dict)
    pins: dict[str, int] = field(default_factory=dict)


def build_graph(n: int, generations: int, expired: int, seed: int) -> Graph:
    """``n`` paths: a core, then ``generations`` pushes; the oldest ``expired`` generations' roots are 31+ days old.

    Every path is in the closure of its generation's roots (the paths nothing else of the generation references),
    as with real pushes, which send closures.
    """
    rng = random.Random(seed)
    core = max(1, n // 50)
    per_gen = (n - core) // generations
    hashes = [encode(rng.randbytes(20)) for _ in range(n)]
    names = [f"pkg-{i}" for i in range(n)]
    refs: list[list[int]] = []
    nar_of = list(range(n))
    published: list[datetime] = []
    roots: dict[int, datetime] = {}
    for i in range(core):
        picks = {int(i * rng.random() ** 3) for _ in range(min(i, rng.randint(0, 6)))}
        refs.append(sorted(picks))
        published.append(NOW - timedelta(days=120))
    # the core is pushed with every generation: its roots are as young as the newest push
    referenced = {r for i in range(core) for r in refs[i] if r != i}
    roots.update({i: NOW - timedelta(hours=2) for i in range(core) if i not in referenced})
    for g in range(generations):
        base = core + g * per_gen
        size = per_gen if g < generations - 1 else n - base
        days = 31 + (expired - g) if g < expired else (generations - g) * 29 / (generations - expired)
        age = timedelta(days=days)
        referenced = set()
        for local in range(size):
            i = base + local
            picks = {int(core * rng.random() ** 4) for _ in range(rng.randint(1, 3))}
            picks |= {base + int(local * rng.random() ** 2) for _ in range(min(local, rng.randint(0, 6)))}
            if g and rng.random() < 0.1:
                picks.add(base - per_gen + rng.randrange(per_gen))
            picks.discard(i)
            referenced.update(picks)
            if rng.random() < 0.4:
                picks.add(i)
            refs.append(sorted(picks))
            published.append(NOW - age - timedelta(seconds=rng.randrange(3600)))
            if rng.random() < 0.005 and i > 0:
                nar_of[i] = nar_of[i - 1]  # identical contents: the NAR is shared
        roots.update({i: NOW - age for i in range(base, base + size) if i not in referenced})
    log = [rng.random() < 0.33 for _ in range(n)]
    graph = Graph(hashes, names, refs, nar_of, log, published, roots)
    for k in range(10):
        graph.pins[f"pin-{k}"] = core + rng.randrange(per_gen * max(1, expired))
    return graph


def nar_key(graph: Graph, i: int) -> str:
    return f"nar/{encode(hashlib.sha256(graph.hashes[graph.nar_of[i]].encode()).digest())}.nar.zst"


def narinfo(graph: Graph, i: int) -> str:
    h, name = graph.hashes[i], graph.names[i]
    refs = " ".join(f"{graph.hashes[r]}-{graph.names[r]}" for r in graph.refs[i])
    return (
        f"StorePath: /nix/store/{h}-{name}\nURL: {nar_key(graph, i)}\nCompression: zstd\n"
        f"FileHash: sha256:{'1' * 52}\nFileSize: 4096\nNarHash: sha256:{'0' * 52}\nNarSize: 16384\n"
        f"References: {refs}\nDeriver: {h}-{name}.drv\nSig: bench-1:{'A' * 86}==\n"
    )


def chunks(n: int) -> Iterator[range]:
    for start in range(0, n, CHUNK):
        yield range(start, min(n, start + CHUNK))


async def load(dsn: str, graph: Graph) -> None:
    """COPY the graph into the database."""
    n = len(graph.hashes)
    async with open_pool(DatabaseSettings(url=dsn, pool_max_size=2), None) as pool:
        await migrate(pool)
        async with pool.acquire() as conn:
            # The data is consistent by construction: skip the foreign-key triggers while loading (superuser).
            await conn.execute("SET session_replication_role = replica")
            for part in chunks(n):
                objects: list[tuple[Any, ...]] = []
                for i in part:
                    when = graph.published[i]
                    objects.append((f"{graph.hashes[i]}.narinfo", "narinfo", "present", 700, when, when))
                    objects.append((f"{graph.hashes[i]}.ls", "ls", "present", 900, when, when))
                    if graph.nar_of[i] == i:
                        objects.append((nar_key(graph, i), "nar", "present", 4096, when, when))
                    if graph.log[i]:
                        objects.append(
                            (f"log/{graph.hashes[i]}-{graph.names[i]}.drv", "log", "present", 2000, when, when)
                        )
                await conn.copy_records_to_table(
                    "objects",
                    records=objects,
                    columns=["key", "kind", "state", "size", "created_at", "present_at"],
                )
            for part in chunks(n):
                rows = [
                    (
                        graph.hashes[i],
                        graph.names[i],
                        "sha256:" + "0" * 52,
                        16384,
                        nar_key(graph, i),
                        f"{graph.hashes[i]}.narinfo",
                        "zstd",
                        "sha256:" + "1" * 52,
                        4096,
                        f"{graph.hashes[i]}-{graph.names[i]}.drv",
                        narinfo(graph, i),
                        graph.published[i],
                    )
                    for i in part
                ]
                await conn.copy_records_to_table(
                    "store_paths",
                    records=rows,
                    columns=[
                        "hash", "name", "nar_hash", "nar_size", "nar_key", "narinfo_key", "compression",
                        "file_hash", "file_size", "deriver", "narinfo", "published_at",
                    ],
                )  # fmt: skip
            for part in chunks(n):
                edges = [(graph.hashes[i], graph.hashes[r]) for i in part for r in graph.refs[i]]
                await conn.copy_records_to_table("path_references", records=edges, columns=["referrer", "reference"])
                files = [(graph.hashes[i], f"{graph.hashes[i]}.ls", "ls") for i in part]
                files += [
                    (graph.hashes[i], f"log/{graph.hashes[i]}-{graph.names[i]}.drv", "log")
                    for i in part
                    if graph.log[i]
                ]
                await conn.copy_records_to_table("path_files", records=files, columns=["hash", "key", "kind"])
            await conn.copy_records_to_table(
                "roots",
                records=[(graph.hashes[i], when, when) for i, when in graph.roots.items()],
                columns=["hash", "first_pushed_at", "last_pushed_at"],
            )
            await conn.copy_records_to_table(
                "pins", records=[(name, graph.hashes[i]) for name, i in graph.pins.items()], columns=["name", "hash"]
            )
            await conn.execute("ANALYZE")


def upload_sample(weed: Any, graph: Graph, sample: int, seed: int) -> int:
    """Put the objects of a random sample of paths into the bucket, plus untracked ones and a stale upload."""
    rng = random.Random(seed + 1)
    s3 = weed.client()
    keys: list[str] = []
    for i in rng.sample(range(len(graph.hashes)), k=min(len(graph.hashes), sample // 3)):
        keys += [f"{graph.hashes[i]}.narinfo", f"{graph.hashes[i]}.ls", nar_key(graph, i)]
    keys += [f"nar/{encode(rng.randbytes(32))}.nar.zst" for _ in range(50)]  # untracked: a crash's leftovers
    from concurrent.futures import ThreadPoolExecutor

    def put(key: str) -> None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 64)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    s3.create_multipart_upload(Bucket=BUCKET, Key=f"nar/{encode(rng.randbytes(32))}.nar.zst")
    return len(keys)


def report(label: str, row: dict[str, Any], seconds: float, rss_kib: int) -> None:
    c = row["counts"]
    phases = ("sessions", "orphans", "mark", "plan", "narinfos", "paths", "objects")
    timing = ", ".join(f"{p} {c[p + '_ms'] / 1000:.1f}s" for p in phases if f"{p}_ms" in c)
    print(f"{label}: {seconds:.1f}s wall, peak RSS {rss_kib / 1024:.0f} MiB; {timing}")
    shown = {k: v for k, v in sorted(c.items()) if not k.endswith("_ms")}
    print(f"  counts: {shown}; bytes_freed {row['bytes_freed']}")


async def table_sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
            for t in ("store_paths", "path_references", "objects", "path_files", "roots", "pins")
        }
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=1_000_000)
    parser.add_argument("--generations", type=int, default=30, help="pushes (days) the paths came in")
    parser.add_argument("--expired", type=int, default=1, help="how many of the oldest pushes have expired")
    parser.add_argument("--sample", type=int, default=20_000, help="objects really put into the bucket")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, workdir)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-gc-") as tmp:
        return bench(args, Path(tmp))


def bench(args: argparse.Namespace, workdir: Path) -> int:
    t0 = time.monotonic()
    graph = build_graph(args.paths, args.generations, args.expired, args.seed)
    print(f"graph: {len(graph.hashes)} paths, {sum(map(len, graph.refs))} references, {len(graph.roots)} roots "
          f"({time.monotonic() - t0:.0f}s)")  # fmt: skip
    with (
        postgres_server(workdir / "pg", settings=DURABLE, keep=bool(args.keep)) as pg,
        seaweed_server(workdir / "s3", keep=bool(args.keep)) as weed,
    ):
        dsn = pg.create_database(f"bench_{secrets.token_hex(3)}")
        weed.create_bucket(BUCKET)
        t0 = time.monotonic()
        asyncio.run(load(dsn, graph))
        print(f"loaded: {asyncio.run(table_sizes(dsn))} ({time.monotonic() - t0:.0f}s)")
        t0 = time.monotonic()
        print(f"bucket: {upload_sample(weed, graph, args.sample, args.seed)} objects ({time.monotonic() - t0:.0f}s)")
        del graph
        config = write_config(workdir, dsn, weed, BUCKET, pool_max_size=8)
        # The sample objects were just written: no grace period, or the orphans would be too young to collect.
        report("dry run", *run_niks3d(config, "gc", "--dry-run", "--grace-period", "0"))
        report("full run", *run_niks3d(config, "gc", "--grace-period", "0"))
        print(f"after: {asyncio.run(table_sizes(dsn))}")
        report("second run (nothing to do)", *run_niks3d(config, "gc", "--grace-period", "0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
