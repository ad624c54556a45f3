"""``niks3d import``: register an existing bucket's store paths in the database (docs/operations.md).

Runs once and exits, like ``niks3d gc``: the collector's lock is held (no GC run at the same time), ``STATUS=``
lines go to systemd, a terminal gets a progress line, the end is one structured log entry (``import.finished``)
and a report by kind (``--json``: the whole report). Exit 0 when everything found was registered (or, with
``--quarantine``, put aside); 2 when problems are left in the bucket; 1 when the import could not run.
"""

from __future__ import annotations

__all__ = ["import_command", "read_pin_file"]

import argparse
import asyncio
import json
import logging
from pathlib import Path

from niks3d.cli.oneshot import open_stores, until_sigterm
from niks3d.cli.progress import StatusLine
from niks3d.config import Config, load_config
from niks3d.db.migrate import migrate
from niks3d.errors import Niks3Error
from niks3d.importer import ImportParams, Report, run_import
from niks3d.logsetup import log_event, setup_logging
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath

logger = logging.getLogger(__name__)


def read_pin_file(path: Path) -> list[StorePath]:
    """Store paths, one a line (blank lines and ``#`` comments ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise Niks3Error(f"cannot read the pin file {path}: {exc.strerror}") from None
    paths = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            paths.append(StorePath.parse(text))
        except NixFormatError as exc:
            raise Niks3Error(f"{path}:{number}: {exc}") from None
    return paths


async def _run(config: Config, params: ImportParams, status: StatusLine) -> Report:
    async with open_stores(config) as (pool, bucket):
        await migrate(pool)
        return await run_import(pool, bucket, params, status)


def import_command(args: argparse.Namespace) -> int:
    """``niks3d import [--root-ttl D | --no-roots] [--pin NAME FILE] [--resign] [--quarantine] [--json]``."""
    config = load_config(args.config)
    setup_logging(getattr(args, "log_level", None) or config.settings.logging.level, config.settings.logging.format)
    gc = config.settings.gc
    if args.resign and not config.secrets.signing_keys:
        raise Niks3Error("--resign needs signing.key_files in the configuration")
    params = ImportParams(
        root_ttl=None if args.no_roots else (args.root_ttl if args.root_ttl is not None else gc.older_than),
        older_than=gc.older_than,
        pins=[(name, read_pin_file(Path(file))) for name, file in args.pin or ()],
        resign=config.secrets.signing_keys if args.resign else (),
        quarantine=args.quarantine,
        batch_size=args.batch_size,
    )
    status = StatusLine()
    try:
        report = asyncio.run(until_sigterm(_run(config, params, status)))
    except asyncio.CancelledError:
        status.done()
        print("niks3d: import stopped by SIGTERM; run it again to continue")
        return 143
    status.done()
    left = [p for p in report.problems if not params.quarantine or p.kind == "pin_not_imported"]
    log_event(
        logger,
        logging.INFO,
        "import.finished",
        "import finished: %d paths registered, %d problems",
        report.counts["paths_registered"],
        len(report.problems),
        **report.counts,
        **report.by_kind(),
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format())
    return 2 if left else 0
