"""A synthetic binary cache written straight into a bucket, fast: for the import benchmark and crash tests.

``N`` store paths in a reference DAG (each path references up to ``fanout`` earlier ones, so the import has
levels), each with a narinfo signed by a throwaway key, a small NAR object (random bytes: import checks sizes,
not contents) and, for every other path, a ``.ls`` listing. Deterministic for a seed.
"""

from __future__ import annotations

__all__ = ["SynthPath", "synth_paths", "write_synth_bucket"]

import asyncio
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from niks3d.nix import nix32
from niks3d.nix.narinfo import NarInfo
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import StorePath
from niks3d.storage.s3 import Bucket


@dataclass(frozen=True, slots=True)
class SynthPath:
    hash: str
    narinfo: bytes
    nar_key: str
    nar: bytes
    listing: bytes | None


def synth_paths(n: int, *, seed: int = 1, fanout: int = 3, key: SecretKey | None = None) -> Iterator[SynthPath]:
    """``n`` paths, references first."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, nothing secret
    key = key or SecretKey.generate("synth-1")
    names: list[str] = []
    for i in range(n):
        path = StorePath.from_basename(f"{nix32.encode(rng.randbytes(20))}-synth-{i}")
        nar = rng.randbytes(64 + rng.randrange(64))
        file_hash = hashlib.sha256(nar).digest()
        refs = rng.sample(names[-200:], min(len(names[-200:]), rng.randrange(fanout + 1))) if names else []
        nar_key = f"nar/{nix32.encode(file_hash)}.nar.xz"
        info = NarInfo(
            store_path=path,
            url=nar_key,
            compression="xz",
            file_hash=file_hash,
            file_size=len(nar),
            nar_hash=hashlib.sha256(b"nar" + nar).digest(),
            nar_size=len(nar) * 2,
            references=tuple(refs),
        ).signed([key])
        names.append(path.basename)
        listing = b'{"version":1,"root":{"type":"regular","size":1}}' if i % 2 == 0 else None
        yield SynthPath(path.hash, info.render().encode(), nar_key, nar, listing)


async def write_synth_bucket(bucket: Bucket, n: int, *, seed: int = 1, concurrency: int = 64) -> int:
    """Write ``n`` synthetic paths (narinfo, NAR, listing for every other) into ``bucket``; returns objects."""
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=concurrency * 4)
    written = 0

    async def worker() -> None:
        nonlocal written
        while (item := await queue.get()) is not None:
            await bucket.put(item[0], item[1], content_type="application/octet-stream")
            written += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    for p in synth_paths(n, seed=seed):
        await queue.put((p.nar_key, p.nar))
        if p.listing is not None:
            await queue.put((f"{p.hash}.ls", p.listing))
        await queue.put((f"{p.hash}.narinfo", p.narinfo))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    return written
