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
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import aiohttp
import nacl.signing

from niks3d.errors import StorageError
from niks3d.nix import nix32
from niks3d.nix.narinfo import NarInfo
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import StorePath
from niks3d.storage.http import presigned_session
from niks3d.storage.s3 import Bucket

_ATTEMPTS = 4


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
    if key is None:  # the same for a seed, so that a write resumed by another process signs alike
        signing_key = nacl.signing.SigningKey(hashlib.sha256(f"synth-key-{seed}".encode()).digest())
        key = SecretKey("synth-1", bytes(signing_key) + bytes(signing_key.verify_key))
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


async def write_synth_bucket(
    bucket: Bucket, n: int, *, seed: int = 1, concurrency: int = 64, present: Collection[str] = ()
) -> int:
    """Write ``n`` synthetic paths (narinfo, NAR, listing for every other) into ``bucket``, skipping the keys in
    ``present`` (what an interrupted write left: the contents are the same for a seed); returns the objects the
    bucket then holds.

    Each object is one presigned PutObject on a plain aiohttp session, ``concurrency`` at once: about half the
    client CPU of a botocore call (docs/storage.md), which is what limited this writer. A 5xx is retried."""
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=concurrency * 4)
    total = 0
    content_type = "application/octet-stream"

    async def put(http: aiohttp.ClientSession, key: str, body: bytes) -> None:
        for attempt in range(_ATTEMPTS):
            request = await bucket.presign_put(key, content_type=content_type)
            async with http.put(request.url, data=body, headers=request.headers) as resp:
                if resp.status == 200:
                    return
                text = await resp.text()
                if resp.status < 500 or attempt == _ATTEMPTS - 1:
                    raise StorageError(f"PUT {key}: HTTP {resp.status}: {text[:300]}")
            await asyncio.sleep(0.1 * 2**attempt)

    async def worker(http: aiohttp.ClientSession) -> None:
        while (item := await queue.get()) is not None:
            await put(http, *item)

    async with presigned_session(connections=concurrency, connect_timeout=10, read_timeout=60) as http:
        workers = [asyncio.create_task(worker(http)) for _ in range(concurrency)]
        try:
            for p in synth_paths(n, seed=seed):
                items = [(p.nar_key, p.nar)]
                if p.listing is not None:
                    items.append((f"{p.hash}.ls", p.listing))
                items.append((f"{p.hash}.narinfo", p.narinfo))
                total += len(items)
                for item in items:
                    if item[0] not in present:
                        await queue.put(item)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
    return total
