"""``niks3d gc``: one garbage-collection run straight against the database and the bucket, then exit.

This is what the systemd timer runs. It takes the collector's lock (a second run while one is active fails with
exit code 1 and names the active run), records the run in ``gc_runs``, sends ``STATUS=`` lines when systemd
listens, prints a summary (or, with ``--json``, the run's record) and exits 0 if the run finished. SIGTERM stops
it cleanly: the run is recorded as interrupted and the next run finishes the job.
"""

from __future__ import annotations

__all__ = ["format_summary", "gc_command", "run_once"]

import argparse
import asyncio
import json
from typing import Any

from niks3d.cli.oneshot import open_stores, until_sigterm
from niks3d.config import Config, load_config
from niks3d.gc import GcContext, GcParams, RunRow, claim_run, collect
from niks3d.gc.collector import SWEEP_CONCURRENCY
from niks3d.logsetup import setup_logging
from niks3d.systemd import Notifier


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_summary(row: RunRow) -> str:
    """Two lines for people: what the run deleted (or would), and what it found on the way."""
    c: dict[str, Any] = dict.fromkeys(("paths_deleted", "paths_kept", "paths_live", "orphans", "sessions_expired"), 0)
    c.update(row.counts)
    objects = sum(v for k, v in row.counts.items() if k.endswith("s_deleted") and k != "paths_deleted")
    verb = "would delete" if row.dry_run else "deleted"
    head = f"gc run {row.id} {row.state}{' (dry run)' if row.dry_run else ''}"
    if row.error:
        head += f": {row.error}"
    return (
        f"{head}\n"
        f"{verb} {c['paths_deleted']} paths and {objects} objects ({_size(row.bytes_freed)}); "
        f"{c['paths_live']} paths live, {c['paths_kept']} kept by concurrent pushes; "
        f"{c['sessions_expired']} sessions expired, {c.get('roots_expired', 0)} roots expired, "
        f"{c['orphans']} untracked objects"
    )


async def run_once(config: Config, params: GcParams, notifier: Notifier | None = None) -> RunRow:
    """Open the database and the bucket of ``config`` and do one run; returns its final row."""
    settings = config.settings
    database = settings.database.model_copy(
        update={"pool_min_size": 1, "pool_max_size": max(settings.database.pool_max_size, SWEEP_CONCURRENCY + 3)}
    )
    async with open_stores(config, database) as (pool, bucket), claim_run(pool, params) as held:
        ctx = GcContext(pool=pool, bucket=bucket, settings=settings.gc, notifier=notifier)
        return await collect(ctx, params, held)


def gc_command(args: argparse.Namespace) -> int:
    """``niks3d gc [--older-than D] [--grace-period D] [--force] [--dry-run] [--json]``."""
    config = load_config(args.config)
    setup_logging(getattr(args, "log_level", None) or config.settings.logging.level, config.settings.logging.format)
    gc = config.settings.gc
    params = GcParams(
        older_than=args.older_than if args.older_than is not None else gc.older_than,
        grace_period=args.grace_period if args.grace_period is not None else gc.grace_period,
        force=args.force,
        dry_run=args.dry_run,
        batch_size=gc.batch_size,
    )
    try:
        row = asyncio.run(until_sigterm(run_once(config, params, Notifier())))
    except asyncio.CancelledError:
        print("niks3d: gc stopped by SIGTERM; the run is recorded as interrupted")
        return 143
    if args.json:
        print(json.dumps(row.to_json(), indent=2))
    else:
        print(format_summary(row))
    return 0 if row.state == "finished" else 1
