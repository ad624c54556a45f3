"""``niks3d fsck``: do the database and the bucket agree with the invariants of docs/gc.md?

Kinds of problem (docs/operations.md, "Checking the cache"; ``*`` marks what ``--repair`` fixes):

``narinfo_missing`` *   a published path's narinfo is not in the bucket (written again from the database)
``narinfo_differs`` *   it is there with other bytes than the database holds (written again)
``nar_missing``         a published path's NAR is not in the bucket
``nar_size``            its NAR has another size than FileSize
``file_missing`` *      a listing, log or realisation of a published path is not in the bucket (forgotten)
``file_size``           it has another size than recorded
``references_differ``   the narinfo's References are not the references the database tracks
``reference_unpublished`` a tracked reference is not published
``untracked`` *         a key under the cache's key space that no row tracks (given a pending row: GC deletes it)
``object_missing`` *    an object recorded present that is not in the bucket and nothing needs (made pending)
``import_unfinished``   the newest import did not finish (GC refuses to run until one does)
``listing_invalid`` *   (``--listings``) a published listing does not parse (written again from the NAR)
``listing_differs`` *   (``--listings``) it describes another tree than its NAR's (written again: fsck/listings.py)

Only paths published, and objects created, before the bucket was listed are checked, so pushes may run
meanwhile; the collector's lock is held, so no GC run deletes anything while the check looks.
"""

from __future__ import annotations

__all__ = ["REPAIRABLE", "FsckParams", "run_fsck"]

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from asyncpg import Connection

from niks3d.db import fsck as db
from niks3d.db import importing as db_importing
from niks3d.db import maintenance as db_maintenance
from niks3d.db.notify import notify_store_paths
from niks3d.db.pool import DbPool
from niks3d.fsck.listings import ListedPath, check_listings, write_listings
from niks3d.gc.runs import collector_lock_held
from niks3d.importer.inventory import Inventory, list_bucket
from niks3d.importer.order import registration_order
from niks3d.importer.problems import Report
from niks3d.importer.record import recorded
from niks3d.nix.errors import NixFormatError
from niks3d.nix.narinfo import parse_narinfo
from niks3d.storage.s3 import Bucket
from niks3d.uploads.objects import CONTENT_TYPES

_BATCH = 1000
REPAIRABLE = frozenset(
    {"narinfo_missing", "narinfo_differs", "file_missing", "untracked", "object_missing"}
    | {"listing_invalid", "listing_differs"}
)


@dataclass(frozen=True)
class FsckParams:
    repair: bool = False
    listings: bool = False  # derive every published listing from its NAR again (reads every listed NAR)


@dataclass
class _Check:
    conn: Connection
    bucket: Bucket
    inventory: Inventory
    report: Report
    repair: bool
    status: Callable[[str], None]
    listings: bool = False

    async def paths(self, before: datetime) -> None:
        after = ""
        rewrites: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # hash -> (key, narinfo, references)
        while batch := await db.paths_after(self.conn, after, before, _BATCH):
            after = batch[-1].hash
            self.report.counts["paths_checked"] += len(batch)
            present = [p.narinfo_key for p in batch if self.inventory.size(p.narinfo_key) == len(p.narinfo.encode())]
            bodies = await self.bucket.get_many(present)
            forget: list[tuple[str, str]] = []
            for p in batch:
                nar_ok = self._nar(p)
                body = bodies.get(p.narinfo_key)
                if self.inventory.size(p.narinfo_key) is None:
                    self.report.add("narinfo_missing", p.narinfo_key, "published, but not in the bucket")
                    if nar_ok:
                        rewrites[p.hash] = (p.narinfo_key, p.narinfo, p.references)
                elif body != p.narinfo.encode():
                    self.report.add("narinfo_differs", p.narinfo_key, "the bucket's bytes are not the database's")
                    if nar_ok:
                        rewrites[p.hash] = (p.narinfo_key, p.narinfo, p.references)
                self._references(p)
                for key, kind, size in p.files:
                    found = self.inventory.size(key)
                    if found is None:
                        self.report.add("file_missing", key, f"the {kind} of {p.hash} is not in the bucket")
                        forget.append((p.hash, key))
                    elif size is not None and found != size:
                        self.report.add("file_size", key, f"{found} bytes, {size} recorded")
            if self.listings:
                await self._listings(batch)
            self.status(f"fsck: {self.report.counts['paths_checked']} paths checked")
            if self.repair:
                await self._forget_files(forget)
        if self.repair and rewrites:
            await self._rewrite_narinfos(rewrites)

    async def _listings(self, batch: list[db.CheckedPath]) -> None:
        listed = [
            ListedPath(key, p.nar_key, p.compression)
            for p in batch
            for key, kind, _ in p.files
            if kind == "ls" and self.inventory.size(key) is not None and self.inventory.size(p.nar_key) is not None
        ]
        rewrite = await check_listings(self.bucket, listed, self.report)
        if self.repair and rewrite:
            await write_listings(self.bucket, rewrite)
            await db.set_sizes(self.conn, [(key, len(body)) for key, body in rewrite])
            self.report.counts["repaired"] += len(rewrite)

    def _nar(self, p: db.CheckedPath) -> bool:
        size = self.inventory.size(p.nar_key)
        if size is None:
            self.report.add("nar_missing", p.nar_key, f"the NAR of {p.hash} is not in the bucket")
            return False
        if size != p.file_size:
            self.report.add("nar_size", p.nar_key, f"{size} bytes, FileSize of {p.hash} says {p.file_size}")
            return False
        return True

    def _references(self, p: db.CheckedPath) -> None:
        try:
            info = parse_narinfo(p.narinfo, expected_hash=p.hash)
        except NixFormatError as exc:  # the schema's checks make this unlikely, not impossible
            self.report.add("references_differ", p.narinfo_key, f"the stored narinfo does not parse: {exc}")
            return
        named = sorted({r[:32] for r in info.references})
        if named != sorted(p.references):
            self.report.add(
                "references_differ", p.narinfo_key, f"narinfo names {len(named)}, the database {len(p.references)}"
            )

    async def _forget_files(self, forget: list[tuple[str, str]]) -> None:
        if forget:
            async with self.conn.transaction():
                await db.drop_files(self.conn, forget)
                await db.release_unneeded(self.conn, [k for _, k in forget])
        self.report.counts["repaired"] += len(forget)

    async def _rewrite_narinfos(self, rewrites: dict[str, tuple[str, str, tuple[str, ...]]]) -> None:
        """Write the database's narinfos again, one at a time and references first (``niks3d.importer.order``),
        so that no rewritten narinfo is visible to Nix before a rewritten narinfo it references."""
        graph = {h: tuple(r for r in refs if r != h) for h, (_, _, refs) in rewrites.items()}
        order, _ = registration_order(graph)
        order += sorted(set(rewrites) - set(order))  # a reference cycle: impossible in published paths, but cheap
        for start in range(0, len(order), _BATCH):
            hashes = order[start : start + _BATCH]
            for hash_part in hashes:
                key, text, _ = rewrites[hash_part]
                await self.bucket.put(key, text.encode(), content_type=CONTENT_TYPES["narinfo"][0])
            async with self.conn.transaction():
                await notify_store_paths(self.conn, published=hashes)
            self.report.counts["repaired"] += len(hashes)

    async def objects(self, before: datetime) -> None:
        reported = {p.key for p in self.report.problems}
        after = ""
        while batch := await db.present_objects_after(self.conn, after, before, 5000):
            after = batch[-1][0]
            gone = [key for key, _, _ in batch if key not in self.inventory.objects and key not in reported]
            for key in gone:
                self.report.add("object_missing", key, "recorded present, not in the bucket")
            if self.repair and gone:
                self.report.counts["repaired"] += await db.release_unneeded(self.conn, gone)

    async def untracked(self) -> None:
        items = sorted(self.inventory.objects.items())
        for start in range(0, len(items), 5000):
            chunk = items[start : start + 5000]
            known = await db_importing.known_object_keys(self.conn, [k for k, _ in chunk])
            orphans = [(k, kind, size, modified) for k, (kind, size, modified) in chunk if k not in known]
            for key, kind, size, _ in orphans:
                self.report.add("untracked", key, f"{kind}, {size} bytes, no row tracks it")
            if self.repair and orphans:
                self.report.counts["repaired"] += await db_importing.adopt_untracked(self.conn, orphans)


async def run_fsck(
    pool: DbPool, bucket: Bucket, params: FsckParams, status: Callable[[str], None] = lambda s: None
) -> Report:
    """One check; raises Niks3Error if a GC run (or an import) holds the collector's lock."""
    report = Report("fsck")
    async with pool.acquire() as conn, collector_lock_held(conn), recorded(conn, report):
        before = await db.db_now(conn)
        if (unfinished := await db_maintenance.unfinished_import(conn)) is not None:
            report.add(
                "import_unfinished",
                f"import {unfinished.id}",
                f"{unfinished.state} since {unfinished.started_at.isoformat()}: untracked objects may be paths it "
                "has not registered yet; run niks3d import again (GC refuses to run until an import finishes)",
            )
        status("fsck: listing the bucket")
        inventory = await list_bucket(bucket)
        report.counts["bucket_objects"] = inventory.listed
        check = _Check(conn, bucket, inventory, report, params.repair, status, params.listings)
        await check.paths(before)
        for referrer, reference in await db.unpublished_references(conn):
            report.add("reference_unpublished", f"{referrer}.narinfo", f"references {reference}, not published")
        await check.objects(before)
        await check.untracked()
    report.counts["problems"] = len(report.problems)
    return report
