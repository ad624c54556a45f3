"""``niks3d fsck``: check that the database and the bucket agree (docs/operations.md, "Checking the cache").

Runs once and exits, like ``niks3d gc``: holds the collector's lock, sends ``STATUS=`` lines, ends with one
structured log entry (``fsck.finished``, with the count of every kind) and a report by kind (``--json``: all of
it). Exit 0 only when every invariant holds (with ``--repair``: when every problem found was repaired), 2 when
problems remain, 1 when the check could not run.
"""

from __future__ import annotations

__all__ = ["fsck_command"]

import argparse
import asyncio
import json
import logging

from niks3d.cli.oneshot import open_stores, until_sigterm
from niks3d.cli.progress import StatusLine
from niks3d.config import Config, load_config
from niks3d.fsck import FsckParams, run_fsck
from niks3d.fsck.check import REPAIRABLE
from niks3d.importer.problems import Report
from niks3d.logsetup import log_event, setup_logging

logger = logging.getLogger(__name__)


async def _run(config: Config, params: FsckParams, status: StatusLine) -> Report:
    async with open_stores(config) as (pool, bucket):
        return await run_fsck(pool, bucket, params, status)


def fsck_command(args: argparse.Namespace) -> int:
    """``niks3d fsck [--repair] [--listings] [--json]``."""
    config = load_config(args.config)
    setup_logging(getattr(args, "log_level", None) or config.settings.logging.level, config.settings.logging.format)
    params = FsckParams(repair=args.repair, listings=args.listings)
    status = StatusLine()
    try:
        report = asyncio.run(until_sigterm(_run(config, params, status)))
    except asyncio.CancelledError:
        status.done()
        print("niks3d: fsck stopped by SIGTERM")
        return 143
    status.done()
    left = [p for p in report.problems if not (params.repair and p.kind in REPAIRABLE)]
    report.state = "inconsistent" if left else "finished"
    log_event(
        logger,
        logging.INFO,
        "fsck.finished",
        "fsck finished: %d paths checked, %d problems, %d left",
        report.counts["paths_checked"],
        len(report.problems),
        len(left),
        **report.counts,
        **report.by_kind(),
        left=len(left),
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format())
    return 2 if left else 0
