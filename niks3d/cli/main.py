"""The ``niks3d`` command line: global options, a table of subcommands and their arguments, the exit codes.

Each subcommand lives in its own module, ``niks3d.cli.<name>`` (dashes become underscores), imported only when
it runs, and is called as ``<name>_command(args) -> int``. This is the only place that turns errors into exit
codes: a :class:`~niks3d.errors.Niks3Error` prints ``niks3d: error: ...`` on stderr and exits 1, an interrupt
exits 130, a usage error 2.
"""

from __future__ import annotations

import argparse
import importlib
import keyword
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

from niks3d import __version__
from niks3d.config import default_config_path, parse_duration
from niks3d.errors import Niks3Error
from niks3d.logsetup import setup_logging

__all__ = ["main"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _config_option(parser: argparse.ArgumentParser) -> None:
    default = default_config_path(os.environ)
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help=f"configuration file (default: $NIKS3_CONFIG or {default})",
    )


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations, only check that the schema is up to date "
        "(when `niks3d migrate` ran before, as the NixOS module's ExecStartPre does)",
    )


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    default = default_config_path(os.environ)
    parser.add_argument(
        "file",
        type=Path,
        nargs="?",
        default=default,
        metavar="FILE",
        help=f"the configuration file to check (default: $NIKS3_CONFIG or {default})",
    )
    parser.add_argument(
        "--no-secrets",
        action="store_true",
        help="check the structure only; do not open the secret files (for build-time checks)",
    )


def _gc_arguments(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument(
        "--older-than",
        type=_duration,
        metavar="DUR",
        help="keep pushed roots younger than this (e.g. 30d; default: gc.older_than)",
    )
    parser.add_argument(
        "--grace-period",
        type=_duration,
        metavar="DUR",
        help="never sweep objects younger than this (e.g. 1h; default: gc.grace_period)",
    )
    parser.add_argument("--force", action="store_true", help="skip the grace period")
    parser.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 10000")
    return int(text)


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    roots = parser.add_mutually_exclusive_group()
    roots.add_argument(
        "--root-ttl",
        type=_duration,
        metavar="DUR",
        help="every imported path is a root that expires after this (default: gc.older_than, like a push now)",
    )
    roots.add_argument("--no-roots", action="store_true", help="imported paths are no roots (GC may delete them)")
    parser.add_argument(
        "--pin",
        nargs=2,
        action="append",
        metavar=("NAME", "FILE"),
        help="pin the store paths listed in FILE (one a line) as NAME (NAME.<hash> when FILE lists several)",
    )
    parser.add_argument("--resign", action="store_true", help="add the server's signatures to imported narinfos")
    parser.add_argument(
        "--quarantine",
        action="store_true",
        help="move broken narinfos to quarantine/ (referrers first) and hand orphan objects to GC",
    )
    parser.add_argument("--batch-size", type=_positive, default=1000, metavar="N", help="paths per transaction")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _fsck_arguments(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument("--repair", action="store_true", help="repair what is always safe to repair")
    parser.add_argument(
        "--listings",
        action="store_true",
        help="derive every published listing from its NAR and report those that say otherwise (reads every NAR)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep PostgreSQL, S3 data and the generated config here (default: a temporary directory)",
    )
    parser.add_argument("--port", type=_port, metavar="N", help="the daemon's HTTP port (default: 5751)")
    parser.add_argument("--keep", action="store_true", help="do not delete the directory on exit")
    parser.add_argument(
        "--trusted-token",
        action="store_true",
        help="mark the dev token trusted: its NARs are shared after the size check alone (docs/security.md)",
    )


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]


COMMANDS = (
    _Command("serve", "run the binary cache daemon", _serve_arguments),
    _Command("migrate", "bring the database schema up to date", _migrate_arguments),
    _Command("check-config", "validate a configuration file and say what is wrong", _check_config_arguments),
    _Command("gc", "run one garbage collection and exit", _gc_arguments),
    _Command("import", "register an existing bucket's store paths in the database", _import_arguments),
    _Command("fsck", "check that the database and the bucket agree", _fsck_arguments),
    _Command("dev", "run a throwaway PostgreSQL, S3 server and daemon to try niks3d out", _dev_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="niks3d", description="Self-hosted Nix binary cache on S3 with garbage collection."
    )
    parser.add_argument("--version", action="version", version=f"niks3d {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="log verbosity (default: logging.level from the configuration, else info)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(sub)
    return parser


def _load_command(name: str) -> Callable[[argparse.Namespace], int]:
    attribute = name.replace("-", "_") + ("_" if keyword.iskeyword(name) else "")  # import -> import_
    module_name = "niks3d.cli." + attribute
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise Niks3Error(f"the {name} command is not available in this installation") from None
    return cast("Callable[[argparse.Namespace], int]", getattr(module, attribute.rstrip("_") + "_command"))


def _print_error(exc: Niks3Error) -> None:
    lines = str(exc).splitlines() or [type(exc).__name__]
    for line in lines:
        print(f"niks3d: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        setup_logging(args.log_level or "info", "auto")
        return _load_command(args.command)(args)
    except Niks3Error as exc:
        _print_error(exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
