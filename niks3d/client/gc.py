"""``niks3 gc`` (start a garbage-collection run on the server and follow it) and ``niks3 delete`` (delete a store
path from the cache, for the pushed-a-secret case); docs/api.md, "Garbage collection".

``niks3 gc`` posts the run, then polls ``GET /api/v1/gc/{id}`` once a second, logging each phase it enters, and
ends with the run's summary (``--json``: its whole record on stdout). It exits 0 when the run finished and 1
when it failed, was interrupted, or could not start because another run is active (the message names that run;
``niks3 gc --run ID`` follows it instead).
"""

from __future__ import annotations

__all__ = ["GC_COMMANDS", "add_gc_commands", "format_run", "run_gc_command"]

import argparse
import asyncio
import json
import logging
from typing import Any

import aiohttp

from niks3d.client.api import ApiClient
from niks3d.client.store import LocalStore, resolve_store_path
from niks3d.errors import ApiError, ClientError

logger = logging.getLogger("niks3d.client")

GC_COMMANDS = ("gc", "delete")
POLL_SECONDS = 1.0


def add_gc_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``gc`` and ``delete`` to the ``niks3`` sub-command parser ``commands``."""
    gc = commands.add_parser("gc", parents=[common], help="run garbage collection on the server and follow it")
    gc.add_argument("--older-than", metavar="DUR", help="keep pushed roots younger than this (e.g. 30d)")
    gc.add_argument("--grace-period", metavar="DUR", help="never delete objects younger than this (e.g. 1h)")
    gc.add_argument("--force", action="store_true", help="skip the grace period")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.add_argument("--run", type=int, metavar="ID", help="follow run ID instead of starting one")
    gc.add_argument("--detach", action="store_true", help="start the run, print its id, do not follow it")
    gc.add_argument("--json", action="store_true", help="print the run's record as JSON on stdout")
    delete = commands.add_parser("delete", parents=[common], help="delete a store path from the cache")
    delete.add_argument("path", help="a store path (or ./result-style link) to delete")
    delete.add_argument("--closure", action="store_true", help="also delete what only this path keeps alive")
    delete.add_argument("--force", action="store_true", help="also delete pins on it and every path referencing it")
    delete.add_argument("--json", action="store_true", help="print the server's answer as JSON on stdout")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_run(run: dict[str, Any]) -> str:
    """The summary of a finished run, for people."""
    c = run.get("counts", {})
    objects = sum(v for k, v in c.items() if k.endswith("s_deleted") and k != "paths_deleted")
    verb = "would delete" if run.get("dry_run") else "deleted"
    head = f"gc run {run['run_id']} {run['state']}{' (dry run)' if run.get('dry_run') else ''}"
    if run.get("error"):
        head += f": {run['error']}"
    return (
        f"{head}: {verb} {c.get('paths_deleted', 0)} paths and {objects} objects "
        f"({_size(run.get('bytes_freed', 0))}); {c.get('paths_live', 0)} paths live, "
        f"{c.get('roots_expired', 0)} roots and {c.get('sessions_expired', 0)} sessions expired"
    )


async def _start(api: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"force": args.force, "dry_run": args.dry_run}
    if args.older_than is not None:
        body["older_than"] = args.older_than
    if args.grace_period is not None:
        body["grace_period"] = args.grace_period
    try:
        started = await api.start_gc(body)
    except ApiError as exc:
        if exc.code == "gc_running":
            run = exc.details.get("run_id")
            hint = f"; follow it with: niks3 gc --run {run}" if run is not None else ""
            raise ClientError(f"{exc.message.split(': ', 1)[-1]}{hint}") from None
        raise
    run_id = int(started["run_id"])
    logger.info("started gc run %d", run_id)
    return run_id


async def _follow(api: ApiClient, run_id: int) -> dict[str, Any]:
    phase = ""
    while True:
        run = await api.get_gc_run(run_id)
        if run["phase"] != phase and run["state"] == "running":
            phase = run["phase"]
            logger.info("gc run %d: %s", run_id, phase)
        if run["state"] != "running":
            return run
        await asyncio.sleep(POLL_SECONDS)


async def _gc(api: ApiClient, args: argparse.Namespace) -> int:
    run_id = args.run if args.run is not None else await _start(api, args)
    if args.detach:
        print(json.dumps({"run_id": run_id}) if args.json else run_id)
        return 0
    run = await _follow(api, run_id)
    logger.info("%s", format_run(run))
    if args.json:
        print(json.dumps(run, indent=2))
    return 0 if run["state"] == "finished" else 1


async def _delete(api: ApiClient, args: argparse.Namespace) -> int:
    path = resolve_store_path(args.path, LocalStore.system(), must_exist=False)
    answer = await api.delete_path(path.basename, closure=args.closure, force=args.force)
    for deleted in answer["deleted"]:
        logger.info("deleted %s", deleted)
    for kept in answer["kept"]:
        logger.warning("kept %s: something started to use it meanwhile", kept)
    logger.info(
        "%d paths and %d objects deleted (%s)",
        len(answer["deleted"]),
        answer["objects_deleted"],
        _size(answer["bytes_freed"]),
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    return 0 if not answer["kept"] else 1


async def run_gc_command(args: argparse.Namespace, http: aiohttp.ClientSession, api: ApiClient) -> int:
    """Run ``niks3 gc`` or ``niks3 delete`` (``args.command``) against the server of ``api``."""
    del http
    if args.command == "delete":
        return await _delete(api, args)
    return await _gc(api, args)
