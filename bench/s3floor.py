"""Benchmark: what one S3 request costs niks3d and SeaweedFS on this machine, the floor under issue 18's per-path cost.

A push costs niks3d a few S3 requests per path (a CopyObject of the NAR into place, the narinfo's PUT, a share of
the batched listing and DeleteObjects): whatever else niks3d does, its CPU per path cannot fall below those
requests' cost. This bench starts a throwaway SeaweedFS, opens the bucket as the daemon does
(:func:`niks3d.storage.open_bucket`, static keys) and runs ``--requests`` of each operation the push path sends,
``--concurrency`` at a time, measuring this process's CPU (``time.process_time``: signing, HTTP, parsing) and
SeaweedFS's (from /proc) per request, next to a bare presigned HEAD on aiohttp (no niks3d code around it):

    .venv/bin/python -m bench.s3floor [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from niks3d.config import S3Settings
from niks3d.devenv.seaweedfs import seaweed_server
from niks3d.storage import Bucket, open_bucket
from testkit.proctree import process_tree

BODY = b"StorePath: /nix/store/x\n" * 24  # about a narinfo's size


async def _each(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with semaphore:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(n)))


# What every published small path costs in S3 requests at the least under the security rules, by the labels
# below: the copy of its staged NAR into place (rule 2), one read of the NAR for its listing (rule 8; a
# verified push reads it for both), the listing's PUT (rule 8) and the narinfo's PUT. The HEAD of the staged
# NAR, which niks3d also sends today, is left out: the read could check the size.
PER_PATH = (
    "Bucket.copy (staged NAR into place)",
    "Bucket.open_stream (a NAR read, whole)",
    "Bucket.put (narinfo-sized)",
    "Bucket.put (narinfo-sized)",
)


async def _measure(args: argparse.Namespace, bucket: Bucket, weed_pid: int, *, quiet: bool = False) -> dict[str, float]:
    """niks3d's CPU per request, in ms, by operation."""
    n, conc = args.requests, args.concurrency
    figures: dict[str, float] = {}
    await _each(n, conc, lambda i: bucket.put(f"staging/s/{i:06}.nar.zst", BODY, content_type="text/plain"))
    http = bucket._http
    assert http is not None

    async def bare_head(i: int) -> None:
        url = await bucket._presign(
            "head_object", {"Bucket": bucket.name, "Key": f"staging/s/{i:06}.nar.zst"}, None, ""
        )
        async with http.head(url) as resp:
            assert resp.status == 200

    async def stream(i: int) -> None:
        async with await bucket.open_stream(f"staging/s/{i:06}.nar.zst") as body:
            async for _chunk in body:
                pass

    async def botocore_get(i: int) -> None:
        resp = await bucket._client.get_object(Bucket=bucket.name, Key=f"staging/s/{i:06}.nar.zst")
        async with resp["Body"] as body:
            await body.read()

    async def listing(_: int) -> None:
        async for _info in bucket.iter_objects("staging/s/"):
            pass

    operations: list[tuple[str, int, Callable[[int], Awaitable[object]]]] = [
        ("presigned HEAD on aiohttp, bare", n, bare_head),
        ("Bucket.head", n, lambda i: bucket.head(f"staging/s/{i:06}.nar.zst")),
        ("Bucket.open_stream (a NAR read, whole)", n, stream),
        ("botocore GetObject, bare", n, botocore_get),
        ("Bucket.put (narinfo-sized)", n, lambda i: bucket.put(f"{i:06}.narinfo", BODY, content_type="text/plain")),
        (
            "Bucket.copy (staged NAR into place)",
            n,
            lambda i: bucket.copy(
                f"staging/s/{i:06}.nar.zst", f"nar/{i:06}.nar.zst", size=len(BODY), content_type="text/plain"
            ),
        ),
        (f"Bucket.iter_objects ({n} keys, per key)", 1, listing),
        (
            "Bucket.delete_many (1000 a request, per key)",
            1,
            lambda _: bucket.delete_many([f"nar/{i:06}.nar.zst" for i in range(n)]),
        ),
    ]
    for label, count, one in operations:
        weed_before = sum(p.cpu_seconds for p in process_tree(weed_pid))
        cpu, wall = time.process_time(), time.monotonic()
        await _each(count, conc, one)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        weed = sum(p.cpu_seconds for p in process_tree(weed_pid)) - weed_before
        figures[label] = 1000 * cpu / n
        if not quiet:
            print(
                f"{label:46} niks3d {1000 * cpu / n:6.3f} ms CPU/request  SeaweedFS {1000 * weed / n:6.3f} ms  "
                f"({n / wall:6.0f}/s; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return figures


def measure(requests: int = 1000, concurrency: int = 32, *, quiet: bool = True) -> dict[str, float]:
    """niks3d's CPU per S3 request, in ms, by operation, against a throwaway SeaweedFS."""
    args = argparse.Namespace(requests=requests, concurrency=concurrency)
    with seaweed_server() as weed:
        weed.create_bucket("floor")
        settings = S3Settings(bucket="floor", endpoint_url=weed.endpoint_url, region=weed.region)

        async def run() -> dict[str, float]:
            async with open_bucket(settings, weed.access_key_id, weed.secret_access_key) as bucket:
                return await _measure(args, bucket, weed.pid, quiet=quiet)

        return asyncio.run(run())


def per_path_floor(figures: dict[str, float]) -> float:
    """The CPU in ms of :data:`PER_PATH`'s requests, at ``figures``' cost each."""
    return sum(figures[label] for label in PER_PATH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    figures = measure(args.requests, args.concurrency, quiet=False)
    print(
        f"the floor of one small path, {len(PER_PATH)} requests (copy, NAR read, listing PUT, narinfo PUT): "
        f"{per_path_floor(figures):.2f} ms of niks3d CPU",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
