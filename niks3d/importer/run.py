"""``niks3d import``: adopt the bucket as it is (docs/operations.md, "Importing a bucket").

Phases: list the bucket; read every narinfo that is not registered yet (and every realisation); stage what can
be registered; mark what is not closure-consistent; register the rest references first, in batches; pins; find
objects no narinfo needs; with ``--quarantine``, make the broken narinfos invisible to Nix (referrers first) and
hand the orphans to GC. The collector's lock is held throughout: no GC run can take unregistered objects for
orphans while the import runs; and the run's ``maintenance_runs`` row (``niks3d.importer.record``) keeps GC away
after an import that did not finish, until one does.
"""

from __future__ import annotations

__all__ = ["ImportParams", "run_import"]

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asyncpg import Connection

from niks3d.db import importing as db
from niks3d.db.pool import DbPool
from niks3d.gc.runs import collector_lock_held
from niks3d.importer.inventory import Inventory, list_bucket
from niks3d.importer.problems import Report
from niks3d.importer.quarantine import quarantine
from niks3d.importer.reading import check_narinfo
from niks3d.importer.record import recorded
from niks3d.importer.register import Registrar, resign_registered
from niks3d.nix.buildtrace import parse_build_trace_entry
from niks3d.nix.errors import NixFormatError
from niks3d.nix.realisation import parse_realisation
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import StorePath
from niks3d.storage.s3 import Bucket

logger = logging.getLogger(__name__)
_STAGE_CHUNK = 2000


@dataclass(frozen=True)
class ImportParams:
    root_ttl: timedelta | None  # None: imported paths are no roots
    older_than: timedelta  # gc.older_than: a root expires this long after its last push
    pins: Sequence[tuple[str, Sequence[StorePath]]] = ()
    resign: Sequence[SecretKey] = ()
    quarantine: bool = False
    batch_size: int = 1000


@dataclass
class _Run:
    conn: Connection
    bucket: Bucket
    params: ImportParams
    report: Report
    status: Callable[[str], None]
    inventory: Inventory = field(default_factory=Inventory)


async def _stage_narinfos(run: _Run, registered: set[str]) -> None:
    todo = [k for k in run.inventory.keys_of("narinfo") if k[:32] not in registered]
    run.report.counts["narinfos_already_registered"] = len(run.inventory.keys_of("narinfo")) - len(todo)
    keys = run.params.resign
    for start in range(0, len(todo), _STAGE_CHUNK):
        staged = []
        for key, body in (await run.bucket.get_many(todo[start : start + _STAGE_CHUNK])).items():
            if body is None:
                continue  # deleted since the listing: nothing to register
            path, problem = check_narinfo(key, body, run.inventory, keys)
            if problem is not None:
                run.report.problems.append(problem)
            elif path is not None:
                staged.append(path)
        await db.stage(run.conn, staged)
        run.report.counts["narinfos_read"] += min(_STAGE_CHUNK, len(todo) - start)
        run.status(f"import: {run.report.counts['narinfos_read']}/{len(todo)} narinfos read")


def _realisation_output(key: str, body: bytes) -> str:
    """The output basename a realisation of either layout names (docs/protocol.md 4.4)."""
    if key.startswith("build-trace-v2/"):
        drv, _, output = key.removeprefix("build-trace-v2/").partition("/")
        return parse_build_trace_entry(body, drv_path=drv, output_name=output.removesuffix(".doi")).out_path
    return parse_realisation(body).out_path


async def _realisations(run: _Run) -> dict[str, list[str]]:
    """Owner hash -> realisation keys, for the realisations no row tracks yet."""
    keys = run.inventory.keys_of("realisation")
    known = await db.known_object_keys(run.conn, keys)
    owners: dict[str, list[str]] = {}
    for key, body in (await run.bucket.get_many([k for k in keys if k not in known])).items():
        if body is None:
            continue
        try:
            out_path = _realisation_output(key, body)
        except (NixFormatError, ValueError) as exc:
            run.report.add("realisation_unparsable", key, str(exc))
            continue
        owners.setdefault(out_path[:32], []).append(key)
    return owners


async def _pins(run: _Run) -> None:
    pins: list[tuple[str, str]] = []
    published = await db.registered_narinfos(run.conn)
    for name, paths in run.params.pins:
        for path in paths:
            if path.hash not in published:
                run.report.add("pin_not_imported", path.path, f"pin {name!r}: the path is not published")
                continue
            pins.append((name if len(paths) == 1 else f"{name}.{path.hash}", path.hash))
    await db.upsert_pins(run.conn, pins, "niks3d import")
    run.report.counts["pins"] = len(pins)


async def _orphans(run: _Run) -> list[tuple[str, str, int, datetime]]:
    """Objects no row tracks (after registration): nothing published needs them."""
    untracked = [(k, v) for k, v in run.inventory.objects.items() if v[0] != "narinfo"]
    orphans: list[tuple[str, str, int, datetime]] = []
    for start in range(0, len(untracked), 5000):
        chunk = untracked[start : start + 5000]
        known = await db.known_object_keys(run.conn, [k for k, _ in chunk])
        for key, (kind, size, modified) in chunk:
            if key not in known:
                orphans.append((key, kind, size, modified))
                run.report.add("orphan", key, f"{kind}, {size} bytes: no narinfo needs it")
    return orphans


async def run_import(
    pool: DbPool, bucket: Bucket, params: ImportParams, status: Callable[[str], None] = lambda s: None
) -> Report:
    """One import; raises Niks3Error if a GC run (or another import or check) holds the collector's lock."""
    report = Report("import")
    async with pool.acquire() as conn, collector_lock_held(conn), recorded(conn, report):
        run = _Run(conn, bucket, params, report, status)
        clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            report.counts[f"{phase}_ms"] = round((now - clock) * 1000)
            clock = now

        status("import: listing the bucket")
        run.inventory = await list_bucket(bucket)
        lap("listing")
        report.counts["bucket_objects"] = run.inventory.listed
        report.counts["foreign_objects"] = run.inventory.foreign
        await db.create_staging(conn)
        await _stage_narinfos(run, await db.registered_narinfos(conn))
        owners = await _realisations(run)
        lap("reading")
        report.counts["unclosed"] = await db.mark_unclosed(conn)
        lap("closure")
        for hash_part, problem, ref in await db.staged_problems(conn):
            report.add(problem, f"{hash_part}.narinfo", f"its reference {ref} has no valid narinfo")
        ttl = params.root_ttl
        registrar = Registrar(
            conn=conn,
            bucket=bucket,
            inventory=run.inventory,
            realisations=owners,
            root_time=db.root_time(datetime.now(UTC), ttl, params.older_than) if ttl is not None else None,
            batch_size=params.batch_size,
            write_narinfos=bool(params.resign),
            on_batch=lambda n: status(f"import: {len(registrar.registered)} paths registered"),
        )
        report.counts["levels"] = await registrar.run()
        lap("registration")
        report.counts["paths_registered"] = len(registrar.registered)
        for hash_part in await db.staged_unregistered(conn):
            report.add("reference_missing", f"{hash_part}.narinfo", "part of a reference cycle")
        if params.resign:
            report.counts["paths_resigned"] = await resign_registered(conn, bucket, params.resign, params.batch_size)
        await _pins(run)
        orphans = await _orphans(run)
        lap("orphans")
        if params.quarantine:
            report.counts.update(await quarantine(conn, bucket, report.problems, orphans))
    return report
