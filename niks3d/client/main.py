"""The ``niks3`` command: ``niks3 push``, ``niks3 pins`` and the rest, talking to a niks3d server.

This is the entry point (``niks3 = niks3d.client.main:main``): it parses the command line, sets up logging and
the progress display, runs the command with :func:`asyncio.run`, and turns errors into one line on stderr and
an exit code (1 for errors, 2 for usage, 130 when interrupted).
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import TextIO

import aiohttp

from niks3d import __version__, eventloop
from niks3d.client.api import ApiClient
from niks3d.client.config import config_from_args
from niks3d.client.gc import GC_COMMANDS, add_gc_commands, run_gc_command
from niks3d.client.oidc import OIDC_PROVIDERS
from niks3d.client.pins import create_pin, delete_pin, format_pins, list_pins
from niks3d.client.pipeline import PipelineSettings
from niks3d.client.progress import Mode, Progress, TerminalLogHandler
from niks3d.client.push import PushOptions, push, summary_line
from niks3d.client.retry import RetryPolicy
from niks3d.client.store import LocalStore, resolve_store_path
from niks3d.client.transport import client_session
from niks3d.client.uploadcmd import UPLOAD_COMMANDS, add_upload_commands, run_upload_command
from niks3d.errors import Niks3Error
from niks3d.logsetup import routed
from niks3d.nix.storepath import StorePath

logger = logging.getLogger("niks3d.client")

_Command = Callable[[aiohttp.ClientSession, ApiClient], Awaitable[int]]


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--server", metavar="URL", default=default, help="niks3d URL (else $NIKS3_SERVER_URL)")
    parser.add_argument("--token-file", metavar="FILE", default=default, help="API token file (else $NIKS3_TOKEN_FILE)")
    parser.add_argument(
        "--client-cert",
        metavar="FILE",
        default=default,
        help="PEM client certificate for an https:// server (else $NIKS3_CLIENT_CERT); docs/auth.md",
    )
    parser.add_argument(
        "--client-key", metavar="FILE", default=default, help="its PEM private key (else $NIKS3_CLIENT_KEY)"
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        default=default,
        help="PEM CA certificates to trust for the server instead of the system's (else $NIKS3_CA_FILE)",
    )
    parser.add_argument(
        "--oidc",
        choices=OIDC_PROVIDERS,
        default=default,
        help="authenticate with the CI job's OIDC ID token instead of a token file (docs/auth.md)",
    )
    parser.add_argument(
        "--oidc-audience", metavar="AUD", default=default, help="audience to ask GitHub for (default: the server URL)"
    )
    parser.add_argument(
        "--oidc-variable",
        metavar="NAME",
        default=default,
        help="variable holding the ID token for --oidc gitlab|env (default: NIKS3_ID_TOKEN)",
    )
    parser.add_argument(
        "--tries",
        type=int,
        metavar="N",
        default=argparse.SUPPRESS if suppress else 8,
        help="tries per request before giving up (default: 8)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0, help="more output"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="only warnings and errors",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``niks3``."""
    parser = argparse.ArgumentParser(prog="niks3", description="Push to and manage a niks3d Nix binary cache.")
    parser.add_argument("--version", action="version", version=f"niks3 {__version__}")
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _common(common, suppress=True)

    p = commands.add_parser("push", parents=[common], help="push store paths and their closures")
    p.add_argument("paths", nargs="*", metavar="PATH", help="store paths or ./result-style links")
    p.add_argument("--stdin", action="store_true", help="also read paths from stdin, whitespace-separated")
    p.add_argument("--pin", metavar="NAME", help="pin the pushed path under NAME once the push completed")
    p.add_argument("--json", action="store_true", help="print what was pushed as JSON on stdout")
    p.add_argument("--store", metavar="DIR", help="push from the chroot store DIR (as nix --store DIR)")
    p.add_argument("--no-logs", action="store_true", help="do not upload build logs")
    p.add_argument("--no-realisations", action="store_true", help="do not send CA realisations")
    p.add_argument(
        "--no-upstream-filter",
        action="store_true",
        help="upload every path, also those an upstream cache (cache.nixos.org) signed",
    )
    p.add_argument(
        "--upstream-key",
        action="append",
        default=[],
        metavar="NAME:KEY",
        help="leave paths signed by this key to its cache, instead of the server's upstream keys (repeatable)",
    )
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="NARs compressed at once (default: CPU count)")
    p.add_argument("--uploads", type=int, metavar="N", default=8, help="uploads in flight (default: 8)")
    p.add_argument("--level", type=int, metavar="N", default=3, help="zstd compression level (default: 3)")
    p.add_argument(
        "--part-memory",
        type=int,
        metavar="MIB",
        default=64,
        help="memory for the parts of a large NAR in flight (default: 64 MiB, i.e. two 32 MiB parts)",
    )
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a status line, even on a terminal")

    pins = commands.add_parser("pins", parents=[common], help="manage pins (named GC roots)")
    actions = pins.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="pin a pushed path under a name")
    create.add_argument("name")
    create.add_argument("path", help="a store path or ./result-style link")
    listing = actions.add_parser("list", parents=[common], help="list pins")
    listing.add_argument("--json", action="store_true", help="print JSON")
    delete = actions.add_parser("delete", parents=[common], help="delete a pin")
    delete.add_argument("name")
    add_gc_commands(commands, common)
    add_upload_commands(commands, common)
    return parser


class _Formatter(logging.Formatter):
    """Plain messages for people; warnings and errors keep their level in front."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def _client_logging(args: argparse.Namespace, progress: Progress, stream: TextIO) -> Iterator[None]:
    """Log ``niks3d.*`` to ``stream`` for the duration of a command, then restore what was there."""
    handler = TerminalLogHandler(stream, progress)
    if args.verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter("%(message)s"))
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    with routed("niks3d", [handler], level=level, propagate=False):
        yield


def _progress_mode(args: argparse.Namespace, stream: TextIO) -> Mode:
    if args.quiet:
        return "quiet"
    if not args.no_progress and stream.isatty() and os.environ.get("TERM") != "dumb":
        return "tty"
    return "plain"


def _push_roots(args: argparse.Namespace, store: LocalStore, stdin: TextIO) -> tuple[StorePath, ...]:
    raw: list[str] = list(args.paths)
    if args.stdin:
        raw += stdin.read().split()
    roots: dict[StorePath, None] = {}
    for arg in raw:
        roots[resolve_store_path(arg, store)] = None
    return tuple(roots)


async def _with_api(args: argparse.Namespace, run: _Command, *, token_required: bool = True) -> int:
    config = config_from_args(args, token_required=token_required)
    async with client_session() as http:
        return await run(http, ApiClient(http, config, RetryPolicy(attempts=max(1, args.tries))))


async def _push_command(args: argparse.Namespace, progress: Progress, stdin: TextIO) -> int:
    store = LocalStore.chroot(args.store) if args.store else LocalStore.system()
    roots = _push_roots(args, store, stdin)
    settings = PipelineSettings(
        uploads=max(1, args.uploads), level=args.level, part_budget=max(1, args.part_memory) << 20
    )
    if args.jobs:
        settings = replace(settings, jobs=max(1, args.jobs))
    options = PushOptions(
        roots=roots,
        store=store,
        pin=args.pin,
        logs=not args.no_logs,
        realisations=not args.no_realisations,
        settings=settings,
        upstream_filter=not args.no_upstream_filter,
        upstream_keys=tuple(args.upstream_key),
    )

    async def run(http: aiohttp.ClientSession, api: ApiClient) -> int:
        # SIGTERM (a CI job being cancelled) stops the push like Ctrl-C: reports are flushed, the session stays
        # open for the next try. asyncio.run already turns SIGINT into a cancellation of this task.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        drawing = asyncio.create_task(progress.run())
        try:
            result = await push(http, api, options, progress)
        finally:
            drawing.cancel()
            progress.clear_line()
        logger.info("%s", summary_line(result))
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        return 0

    return await _with_api(args, run)


async def _pins_command(args: argparse.Namespace) -> int:
    async def run(http: aiohttp.ClientSession, api: ApiClient) -> int:
        if args.action == "create":
            path = resolve_store_path(args.path, LocalStore.system(), must_exist=False)
            pin = await create_pin(api, args.name, path)
            logger.info("pinned %s as %r", pin.path, pin.name)
        elif args.action == "list":
            pins = await list_pins(api)
            if args.json:
                print(json.dumps({"pins": [p.model_dump() for p in pins]}, indent=2))
            else:
                print(format_pins(pins))
        elif await delete_pin(api, args.name):
            logger.info("deleted pin %r", args.name)
        else:
            logger.info("there was no pin %r", args.name)
        return 0

    return await _with_api(args, run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``niks3`` with ``argv`` (default: the process's arguments); return the exit code."""
    args = build_parser().parse_args(argv)
    stream = sys.stderr
    progress = Progress("quiet")
    if args.command == "push":
        progress = Progress(_progress_mode(args, stream), stream)
    try:
        with _client_logging(args, progress, stream):
            if args.command == "push":
                return eventloop.run(_push_command(args, progress, sys.stdin))
            if args.command in UPLOAD_COMMANDS:
                return eventloop.run(run_upload_command(args))
            if args.command in GC_COMMANDS:
                return asyncio.run(_with_api(args, lambda http, api: run_gc_command(args, http, api)))
            return asyncio.run(_pins_command(args))
    except Niks3Error as exc:
        progress.clear_line()
        print(f"niks3: error: {exc}", file=stream)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.clear_line()
        print("niks3: interrupted; run the same command again to resume the push", file=stream)
        return 130
