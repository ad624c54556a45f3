"""A cache seeded straight into PostgreSQL and the bucket, for collector tests that need many paths quickly.

``Cache.add_path`` writes what a completed push leaves behind (objects rows and objects, the store path row with a
real narinfo, references, per-path files, a root or a pin), dated in the past so the grace period does not hide it.
``Cache.check`` asserts the invariants that the collector must keep: every narinfo in the bucket has its NAR and
the narinfos of its references, and every object row that claims to be present is in the bucket.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from niks3d.config import GcSettings
from niks3d.gc import GcContext, GcParams, RunRow, claim_run, collect
from niks3d.nix.bucketkeys import log_key, ls_key, nar_key, narinfo_key
from niks3d.nix.hashes import format_sha256
from niks3d.nix.narinfo import NarInfo, parse_narinfo
from niks3d.nix.nix32 import encode
from niks3d.nix.storepath import StorePath
from niks3d.storage.s3 import Bucket

OLD = timedelta(days=2)


@dataclass
class Seeded:
    """A path seeded into the cache and the keys of its objects."""

    path: StorePath
    nar_key: str
    refs: list[str] = field(default_factory=list)  # hash parts
    files: list[str] = field(default_factory=list)  # ls / log keys

    @property
    def hash(self) -> str:
        return self.path.hash

    @property
    def narinfo_key(self) -> str:
        return narinfo_key(self.path.hash)

    @property
    def keys(self) -> set[str]:
        return {self.narinfo_key, self.nar_key, *self.files}


class Cache:
    def __init__(self, pool: asyncpg.Pool, bucket: Bucket, seed: int = 0) -> None:
        self.pool = pool
        self.bucket = bucket
        self.rng = random.Random(seed)

    def _hash(self) -> str:
        return encode(self.rng.randbytes(20))

    async def add_path(
        self,
        name: str,
        refs: list[Seeded] = (),  # type: ignore[assignment]
        *,
        age: timedelta = OLD,
        root: bool = False,
        root_age: timedelta | None = None,
        pin: str | None = None,
        log: bool = False,
        self_ref: bool = False,
        nar_from: Seeded | None = None,
    ) -> Seeded:
        path = StorePath(self._hash(), name)
        nar = nar_from.nar_key if nar_from else nar_key(hashlib.sha256(self.rng.randbytes(16)).digest())
        nar_body = self.rng.randbytes(64)
        deriver = f"{self._hash()}-{name}.drv"
        ref_hashes = [r.hash for r in refs] + ([path.hash] if self_ref else [])
        basenames = sorted([r.path.basename for r in refs] + ([path.basename] if self_ref else []))
        info = NarInfo(
            store_path=path,
            url=nar,
            compression="zstd",
            file_hash=hashlib.sha256(nar_body).digest(),
            file_size=len(nar_body),
            nar_hash=hashlib.sha256(nar_body + b"nar").digest(),
            nar_size=100,
            references=tuple(basenames),
            deriver=deriver,
            system=None,
            sigs=(),
            ca=None,
        )
        text = info.render()
        files = [(ls_key(path.hash), "ls")] + ([(log_key(deriver), "log")] if log else [])
        objects = [(narinfo_key(path.hash), "narinfo", text.encode()), (nar, "nar", nar_body)]
        objects += [(key, kind, f"{kind} of {path}".encode()) for key, kind in files]
        for key, _, body in objects:
            await self.bucket.put(key, body, content_type="application/octet-stream")
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """INSERT INTO objects (key, kind, state, size, created_at, present_at)
                   VALUES ($1, $2, 'present', $3, now() - $4::interval, now() - $4::interval)
                   ON CONFLICT (key) DO NOTHING""",
                [(key, kind, len(body), age) for key, kind, body in objects],
            )
            await conn.execute(
                """INSERT INTO store_paths (hash, name, nar_hash, nar_size, nar_key, narinfo_key, compression,
                                            file_hash, file_size, deriver, ca, narinfo, published_at)
                   VALUES ($1, $2, $3, $4, $5, $6, 'zstd', $7, $8, $9, NULL, $10, now() - $11::interval)""",
                path.hash,
                path.name,
                format_sha256(info.nar_hash),
                info.nar_size,
                nar,
                narinfo_key(path.hash),
                format_sha256(hashlib.sha256(nar_body).digest()),
                info.file_size,
                deriver,
                text,
                age,
            )
            await conn.executemany(
                "INSERT INTO path_references (referrer, reference) VALUES ($1, $2)",
                [(path.hash, r) for r in ref_hashes],
            )
            await conn.executemany(
                "INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, $3)",
                [(path.hash, key, kind) for key, kind in files],
            )
            if root:
                await conn.execute(
                    "INSERT INTO roots (hash, first_pushed_at, last_pushed_at) VALUES ($1, now() - $2::interval, "
                    "now() - $2::interval)",
                    path.hash,
                    root_age if root_age is not None else age,
                )
            if pin:
                await conn.execute("INSERT INTO pins (name, hash) VALUES ($1, $2)", pin, path.hash)
        return Seeded(path, nar, [r.hash for r in refs], [k for k, _ in files])

    async def bucket_keys(self) -> set[str]:
        return {o.key async for o in self.bucket.iter_objects()}

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def object_rows(self) -> dict[str, str]:
        return {r["key"]: r["state"] for r in await self.fetch("SELECT key, state FROM objects")}

    async def published(self) -> set[str]:
        return {r["hash"] for r in await self.fetch("SELECT hash FROM store_paths")}

    async def check(self) -> set[str]:
        """Assert the invariants; returns the bucket's keys."""
        keys = await self.bucket_keys()
        for key in sorted(k for k in keys if k.endswith(".narinfo")):
            info = parse_narinfo(await self.bucket.get(key), expected_hash=key[:32])
            assert info.url in keys, f"{key} names the NAR {info.url}, which is not in the bucket"
            for ref in info.references:
                assert f"{ref[:32]}.narinfo" in keys, f"{key} references {ref}, whose narinfo is not in the bucket"
        rows = await self.object_rows()
        present = {k for k, state in rows.items() if state == "present"}
        assert present <= keys, f"rows say present but the bucket lacks {sorted(present - keys)[:5]}"
        untracked = {k for k in keys if k != "nix-cache-info"} - set(rows)
        assert not untracked, f"objects without rows: {sorted(untracked)[:5]}"
        for r in await self.fetch("SELECT narinfo_key, nar_key FROM store_paths"):
            assert r["narinfo_key"] in keys and r["nar_key"] in keys, f"published path lost objects: {dict(r)}"
        return keys


def gc_context(pool: asyncpg.Pool, bucket: Bucket, **settings: Any) -> GcContext:
    return GcContext(pool=pool, bucket=bucket, settings=GcSettings(**settings))


async def run_gc(ctx: GcContext, **params: Any) -> RunRow:
    """One run with the given GcParams fields (defaults: the context's settings)."""
    values: dict[str, Any] = {
        "older_than": ctx.settings.older_than,
        "grace_period": ctx.settings.grace_period,
        "batch_size": ctx.settings.batch_size,
    }
    values.update(params)
    gc_params = GcParams(**values)
    async with claim_run(ctx.pool, gc_params) as held:
        return await collect(ctx, gc_params, held)
