"""Registering staged paths, references first, in batches that each commit what a push's ``complete`` commits.

In the order of ``niks3d.importer.order`` (computed once: every path after the staged paths it references), in
batches of ``batch_size`` that may span levels (a reference is in an earlier batch or in the same one). Each
batch is one transaction that records the objects as present (narinfo, NAR, listing, log, realisations),
inserts the ``store_paths`` rows with their references and files (``niks3d.db.paths.insert_published``, the same
insert a push uses), tells the read proxies, makes the paths roots and drops them from staging. With
``--resign`` the re-signed narinfo is written to the bucket while its row is locked, before the commit, as a
push writes its narinfos (a crash in between leaves a narinfo that the next run signs again to the same bytes).
"""

from __future__ import annotations

__all__ = ["Registrar", "resign_registered"]

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from asyncpg import Connection

from niks3d.db import importing as db
from niks3d.db import paths as db_paths
from niks3d.db import uploads as db_uploads
from niks3d.db.notify import notify_store_paths
from niks3d.importer.inventory import Inventory
from niks3d.importer.order import registration_order
from niks3d.nix.bucketkeys import log_key, ls_key, narinfo_key
from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.signing import SecretKey
from niks3d.storage.s3 import Bucket
from niks3d.uploads.objects import CONTENT_TYPES

_PUT_CONCURRENCY = 32


@dataclass
class Registrar:
    conn: Connection
    bucket: Bucket
    inventory: Inventory
    realisations: dict[str, list[str]]  # owner hash -> realisation keys
    root_time: datetime | None
    batch_size: int
    write_narinfos: bool  # --resign: the staged narinfo differs from the bucket's
    on_batch: Callable[[int], None] = lambda n: None
    registered: list[str] = field(default_factory=list)

    def _files(self, p: db.StagedPath) -> list[tuple[str, str, int]]:
        files: list[tuple[str, str, int]] = []
        listing = ls_key(p.hash)
        if (size := self.inventory.size(listing)) is not None:
            files.append((listing, "ls", size))
        if p.deriver is not None:
            log = log_key(p.deriver)
            if (size := self.inventory.size(log)) is not None:
                files.append((log, "log", size))
        for key in self.realisations.get(p.hash, ()):
            size = self.inventory.size(key)
            if size is not None:
                files.append((key, "realisation", size))
        return files

    async def run(self) -> int:
        """Register every staged path that can be, references first; returns the number of levels."""
        order, levels = registration_order(await db.staged_graph(self.conn))
        for start in range(0, len(order), self.batch_size):
            await self._batch(order[start : start + self.batch_size])
        return levels

    async def _batch(self, hashes: Sequence[str]) -> None:
        staged = await db.staged_paths(self.conn, hashes)
        rows: list[db_paths.PublishedPath] = []
        objects: list[tuple[str, str, int, str | None]] = []
        for p in staged:
            files = self._files(p)
            key = narinfo_key(p.hash)
            objects.append((key, "narinfo", len(p.narinfo.encode()), None))
            objects.append((p.nar_key, "nar", p.file_size, p.file_hash))
            objects.extend((k, kind, size, None) for k, kind, size in files)
            rows.append(
                db_paths.PublishedPath(
                    hash=p.hash,
                    name=p.name,
                    nar_hash=p.nar_hash,
                    nar_size=p.nar_size,
                    nar_key=p.nar_key,
                    narinfo_key=key,
                    compression=p.compression,
                    file_hash=p.file_hash,
                    file_size=p.file_size,
                    deriver=p.deriver,
                    ca=p.ca,
                    narinfo=p.narinfo,
                    references=p.refs,
                    files=tuple((k, kind) for k, kind, _ in files),
                )
            )
        async with self.conn.transaction():
            await db.register_objects(self.conn, objects)
            await db_uploads.lock_objects(self.conn, sorted(r.narinfo_key for r in rows))
            already = await db_paths.published_hashes(self.conn, [r.hash for r in rows])
            rows = [r for r in rows if r.hash not in already]
            if self.write_narinfos:
                await self._put([(r.narinfo_key, r.narinfo.encode()) for r in rows])
            await db_paths.insert_published(self.conn, rows)
            await notify_store_paths(self.conn, published=[r.hash for r in rows])
            if self.root_time is not None:
                await db.touch_import_roots(self.conn, [r.hash for r in rows], self.root_time)
            await db.drop_staged(self.conn, [p.hash for p in staged])
        self.registered.extend(r.hash for r in rows)
        self.on_batch(len(rows))

    async def _put(self, items: list[tuple[str, bytes]]) -> None:
        slots = asyncio.Semaphore(_PUT_CONCURRENCY)
        content_type = CONTENT_TYPES["narinfo"][0]

        async def put(key: str, body: bytes) -> None:
            async with slots:
                await self.bucket.put(key, body, content_type=content_type)

        async with asyncio.TaskGroup() as group:
            for key, body in items:
                group.create_task(put(key, body))


async def resign_registered(conn: Connection, bucket: Bucket, keys: Sequence[SecretKey], batch_size: int) -> int:
    """Add the server's signatures to published narinfos that lack one (paths registered by an earlier import
    without ``--resign``); returns how many were re-signed. Each batch is written to the bucket while its rows
    are locked, then committed."""
    done = 0
    after = ""
    content_type = CONTENT_TYPES["narinfo"][0]
    while rows := await db.narinfos_unsigned_by(conn, [k.name for k in keys], after, batch_size):
        after = rows[-1][0]
        signed = [(h, parse_narinfo(text, expected_hash=h).signed(keys).render()) for h, text in rows]
        async with conn.transaction():
            await db_uploads.lock_objects(conn, sorted(narinfo_key(h) for h, _ in signed))
            for hash_part, text in signed:
                await bucket.put(narinfo_key(hash_part), text.encode(), content_type=content_type)
            await db.replace_narinfos(conn, signed)
            await notify_store_paths(conn, published=[h for h, _ in signed])
        done += len(signed)
    return done
