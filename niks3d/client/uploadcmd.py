"""The upload-as-you-build commands of ``niks3``: ``agent``, ``queue``, ``build``, ``hook-script`` (docs/client.md).

``niks3 hook`` is listed here for ``--help``, but the console script runs it before importing this module
(:mod:`niks3d.client.entry`), so that it starts fast.
"""

from __future__ import annotations

__all__ = ["UPLOAD_COMMANDS", "add_upload_commands", "run_upload_command"]

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from niks3d.client.agent import Agent, AgentOptions
from niks3d.client.api import ApiClient
from niks3d.client.build import BuildOptions, run_build
from niks3d.client.config import config_from_args
from niks3d.client.hook import run_hook
from niks3d.client.hookscript import hook_script_text, write_hook_script
from niks3d.client.pipeline import PipelineSettings
from niks3d.client.queue import Queue, QueueError, default_queue_path
from niks3d.client.retry import RetryPolicy
from niks3d.client.store import LocalStore, resolve_store_path
from niks3d.client.storescan import parse_since
from niks3d.client.transport import client_session
from niks3d.errors import ClientError
from niks3d.logsetup import routed, setup_logging, stderr_is_journal
from niks3d.systemd import Notifier

logger = logging.getLogger("niks3d.client")

UPLOAD_COMMANDS = ("agent", "queue", "build", "hook", "hook-script")


def _agent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="DIR", help="push from the chroot store DIR (as nix --store DIR)")
    parser.add_argument("--batch", type=int, metavar="N", default=100, help="queued paths per push (default: 100)")
    parser.add_argument(
        "--max-attempts", type=int, metavar="N", default=5, help="tries of a failing path before it is marked failed"
    )
    parser.add_argument(
        "--max-backoff", type=float, metavar="S", default=60.0, help="longest wait while the server is down (60 s)"
    )
    parser.add_argument("--no-logs", action="store_true", help="do not upload build logs")
    parser.add_argument("--no-realisations", action="store_true", help="do not send CA realisations")
    parser.add_argument("-j", "--jobs", type=int, metavar="N", help="NARs compressed at once (default: CPU count)")
    parser.add_argument("--uploads", type=int, metavar="N", default=8, help="uploads in flight (default: 8)")


def add_upload_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``agent``, ``queue`` and ``build`` to the ``niks3`` sub-command parser ``commands``."""
    queue_help = "the queue file (default: $NIKS3_QUEUE, else /var/lib/niks3-upload/queue.sqlite for root, else "
    queue_help += "$XDG_STATE_HOME/niks3/queue.sqlite)"

    agent = commands.add_parser("agent", parents=[common], help="upload what the post-build hook queued")
    agent.add_argument("--queue", metavar="FILE", help=queue_help)
    agent.add_argument("--once", action="store_true", help="drain the queue, then exit (for CI jobs)")
    agent.add_argument(
        "--retry-for",
        type=float,
        metavar="S",
        default=600.0,
        help="with --once: give up after S seconds without reaching the server (default: 600)",
    )
    agent.add_argument("--scan-store", action="store_true", help="also queue paths new in the local store")
    agent.add_argument("--since", metavar="TIME", help="with --scan-store: start at paths registered since TIME")
    agent.add_argument("--json", action="store_true", help="print what the run did as JSON on stdout")
    _agent_options(agent)

    queue = commands.add_parser("queue", parents=[common], help="show or edit the upload queue")
    queue.add_argument("--queue", metavar="FILE", help=queue_help)
    queue.add_argument("--json", action="store_true", help="print the entries as JSON")
    actions = queue.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="what is waiting and what failed, and why (the default)")
    add = actions.add_parser("add", help="queue store paths by hand")
    add.add_argument("paths", nargs="+", metavar="PATH")
    actions.add_parser("retry", help="try failed entries again")
    actions.add_parser("drop-failed", help="forget failed entries")

    hook = commands.add_parser("hook", help="Nix's post-build hook: queue $OUT_PATHS (see also hook-script)")
    hook.add_argument("--queue", metavar="FILE", help=queue_help)
    script = commands.add_parser("hook-script", help="write the fast post-build hook (sh + sqlite3) for a queue")
    script.add_argument("--queue", metavar="FILE", help=queue_help)
    script.add_argument("-o", "--output", metavar="FILE", help="write it to FILE, mode 0755 (default: stdout)")
    script.add_argument("--sqlite3", metavar="PATH", help="the sqlite3 shell to use (default: sqlite3 on $PATH)")

    build = commands.add_parser(
        "build", parents=[common], help="nix build, uploading every output as it is built (niks3 build -- ARGS)"
    )
    build.add_argument("--queue", metavar="FILE", help="where paths that could not be uploaded are kept")
    build.add_argument("--retry-for", type=float, metavar="S", default=300.0, help="give up uploads after S seconds")
    _agent_options(build)
    build.add_argument("nix_args", nargs=argparse.REMAINDER, metavar="NIX_ARGS", help="arguments of nix build")


def _build_agent_options(args: argparse.Namespace, queue_path: str, *, once: bool) -> AgentOptions:
    store = LocalStore.chroot(args.store) if args.store else LocalStore.system()
    settings = PipelineSettings(uploads=max(1, args.uploads))
    if args.jobs:
        settings = replace(settings, jobs=max(1, args.jobs))
    since = getattr(args, "since", None)
    return AgentOptions(
        queue_path=queue_path,
        store=store,
        once=once,
        batch_size=max(1, args.batch),
        max_attempts=max(1, args.max_attempts),
        max_backoff=max(1.0, args.max_backoff),
        retry_for=args.retry_for,
        scan_store=getattr(args, "scan_store", False),
        scan_since=parse_since(since) if since else None,
        logs=not args.no_logs,
        realisations=not args.no_realisations,
        settings=settings,
    )


def _format_entries(queue: Queue) -> str:
    now = time.time()
    lines: list[str] = []
    for e in queue.entries():
        if e.failed:
            state = f"FAILED after {e.attempts} tries"
        elif e.batch is not None:
            state = f"in batch {e.batch}"
        elif e.not_before > now:
            state = f"retry in {e.not_before - now:.0f} s"
        else:
            state = "waiting"
        line = f"{e.path}  {state}  (queued {now - e.queued_at:.0f} s ago by {e.source})"
        if e.last_error:
            line += f"\n    last error: {e.last_error}"
        lines.append(line)
    waiting, failed = queue.counts()
    lines.append(f"{waiting} waiting, {failed} failed in {queue.path}")
    return "\n".join(lines)


def _queue_command(args: argparse.Namespace) -> int:
    path = args.queue or default_queue_path()
    try:
        with Queue(path, create_dir=args.queue is None) as queue:
            if args.action == "add":
                store = LocalStore.system()
                queue.add([resolve_store_path(p, store).path for p in args.paths], source="cli")
                logger.info("queued %d paths in %s", len(args.paths), path)
            elif args.action == "retry":
                logger.info("%d failed entries are due again", queue.retry_failed())
            elif args.action == "drop-failed":
                logger.info("forgot %d failed entries", queue.drop_failed())
            elif args.json:
                print(json.dumps({"queue": path, "entries": [e.as_json() for e in queue.entries()]}, indent=2))
            else:
                print(_format_entries(queue))
    except QueueError as exc:
        raise ClientError(str(exc)) from None
    return 0


@contextlib.contextmanager
def _journal_logging(args: argparse.Namespace) -> Iterator[None]:
    """Under systemd, log to the journal with fields (event names, counts) instead of plain lines."""
    if not stderr_is_journal():
        yield
        return
    setup_logging("debug" if args.verbose else "info", "journal")
    with routed("niks3d", [], propagate=True):
        yield


async def _with_api(args: argparse.Namespace, run: Any) -> int:
    config = config_from_args(args)
    async with client_session() as http:
        code: int = await run(http, ApiClient(http, config, RetryPolicy(attempts=max(1, args.tries))))
        return code


async def _agent_command(args: argparse.Namespace) -> int:
    options = _build_agent_options(args, args.queue or default_queue_path(), once=args.once)
    notifier = Notifier()

    async def run(http: aiohttp.ClientSession, api: ApiClient) -> int:
        stop = asyncio.Event()
        agent = Agent(http, api, options, notifier=notifier, stop=stop)
        task = asyncio.current_task()
        assert task is not None

        terminated: list[bool] = []

        def terminate() -> None:
            terminated.append(True)
            notifier.stopping()
            logger.info("SIGTERM: stopping; a batch in progress resumes at the next start")
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
        try:
            result = await agent.run()
        except asyncio.CancelledError:
            if not terminated:
                raise
            task.uncancel()
            return 0
        if args.json:
            print(json.dumps(result.__dict__, indent=2))
        logger.info(
            "published %d queued paths in %d batches; %d dropped, %d waiting, %d failed",
            result.published,
            result.batches,
            result.dropped,
            result.waiting,
            result.failed,
        )
        return 1 if result.gave_up or (args.once and (result.failed or result.waiting)) else 0

    with _journal_logging(args):
        return await _with_api(args, run)


async def _build_command(args: argparse.Namespace) -> int:
    nix_args = list(args.nix_args)
    if nix_args[:1] == ["--"]:
        nix_args = nix_args[1:]
    options = BuildOptions(
        nix_args=tuple(nix_args),
        agent=_build_agent_options(args, "", once=False),
        fallback_queue=args.queue,
    )

    async def run(http: aiohttp.ClientSession, api: ApiClient) -> int:
        return await run_build(http, api, options)

    return await _with_api(args, run)


def _hook_script_command(args: argparse.Namespace) -> int:
    queue = args.queue or default_queue_path()
    sqlite3 = args.sqlite3 or shutil.which("sqlite3")
    if sqlite3 is None:
        logger.warning("no sqlite3 on $PATH: the script always takes the slower Python hook")
    if args.output:
        write_hook_script(Path(args.output), queue, sqlite3=sqlite3)
    else:
        sys.stdout.write(hook_script_text(queue, sqlite3=sqlite3))
    return 0


async def run_upload_command(args: argparse.Namespace) -> int:
    """Run ``agent``, ``queue``, ``build``, ``hook`` or ``hook-script``; returns the exit code."""
    if args.command == "queue":
        return _queue_command(args)
    if args.command == "hook":
        return run_hook(["--queue", args.queue] if args.queue else [], os.environ, sys.stderr)
    if args.command == "hook-script":
        return _hook_script_command(args)
    if args.command == "agent":
        return await _agent_command(args)
    return await _build_command(args)
