"""``niks3 hook`` (also the ``niks3-hook`` program): Nix's ``post-build-hook``, which only queues what was built.

Nix runs the hook after every successful build with ``OUT_PATHS`` (the outputs, space-separated) and
``DRV_PATH`` in the environment. The hook adds the outputs to the upload queue (:mod:`niks3d.client.queue`) and
returns; ``niks3 agent`` uploads them. It never talks to the network and never runs ``nix``.

It never fails a build: whatever goes wrong (garbage in ``OUT_PATHS``, a missing or read-only queue), it says
why on stderr, which Nix shows with the build, and exits 0. A hook that exits non-zero makes Nix stop building
(Nix 2.8 and later treat it as an error of the build).

It imports only the standard library and the queue module, so that a call costs little more than starting the
interpreter (docs/client.md, bench/hook.py).
"""

from __future__ import annotations

__all__ = ["main", "outputs_from_drv", "run_hook"]

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds at every build
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import TextIO

from niks3d.client.queue import Queue, QueueError, default_queue_path, looks_like_store_path  # noqa: E402

_USAGE = "usage: niks3 hook [--queue FILE]  (Nix runs it as post-build-hook, with OUT_PATHS and DRV_PATH set)"


def _parse(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """``(queue or None, usage problem or None)``."""
    queue: str | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            return None, "help"
        if arg == "--queue" and args:
            queue = args.pop(0)
        elif arg.startswith("--queue="):
            queue = arg.removeprefix("--queue=")
        else:
            return None, f"unexpected argument {arg!r}"
    return queue, None


def outputs_from_drv(drv: str, limit: int = 1 << 20) -> list[str]:
    """The output paths a derivation file names, for Nix 2.8.0, which runs the hook with ``OUT_PATHS`` empty.

    Nix 2.8.0 passes an empty ``OUT_PATHS`` (NixOS/nix#6446, fixed in 2.8.1) but a correct ``DRV_PATH``. A
    ``.drv`` file starts with its outputs, ``Derive([("out","/nix/store/…","",""),…],``; the paths that exist
    on disk are what was built. Floating content-addressed outputs have no path there and are missed.
    """
    try:
        with open(drv, "rb") as handle:
            head = handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return []
    if not head.startswith('Derive([("'):
        return []
    found: list[str] = []
    for item in head[len("Derive([") :].split("]", 1)[0].split("),("):
        fields = item.strip("()").split('","')
        if len(fields) >= 2:
            path = fields[1].strip('"')
            if looks_like_store_path(path) and os.path.lexists(path):
                found.append(path)
    return found


def run_hook(argv: Sequence[str], environ: Mapping[str, str], stderr: TextIO) -> int:
    """Queue ``$OUT_PATHS``; always returns 0, and says on ``stderr`` what it could not do."""
    queue_arg, problem = _parse(argv)
    if problem == "help":
        print(_USAGE, file=stderr)
        return 0
    if problem is not None:
        print(f"niks3 hook: {problem}; queuing nothing. {_USAGE}", file=stderr)
        return 0
    words = environ.get("OUT_PATHS", "").split()
    drv = environ.get("DRV_PATH") or None
    if drv is not None and not looks_like_store_path(drv):
        print(f"niks3 hook: ignoring DRV_PATH {drv[:300]!r}: not a store path", file=stderr)
        drv = None
    paths = [w for w in words if looks_like_store_path(w)]
    bad = [w for w in words if not looks_like_store_path(w)]
    if bad:
        shown = ", ".join(repr(b[:300]) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        print(f"niks3 hook: ignoring {len(bad)} word(s) of OUT_PATHS that are not store paths: {shown}", file=stderr)
    if not words and drv is not None:
        paths = outputs_from_drv(drv)
    if not paths:
        if not words:
            print("niks3 hook: OUT_PATHS is empty or unset; nothing to queue", file=stderr)
        return 0
    where = queue_arg or default_queue_path(environ)
    try:
        with Queue(where, create_dir=queue_arg is None and not environ.get("NIKS3_QUEUE")) as queue:
            queue.add(paths, drv=drv, source="hook")
    except QueueError as exc:
        print(
            f"niks3 hook: {exc}; NOT queued for upload: {' '.join(paths)} (the build goes on; push them with "
            "`niks3 push` or `niks3 queue add`)",
            file=stderr,
        )
    except Exception as exc:  # the hook must never fail a build, whatever happened
        print(f"niks3 hook: unexpected {type(exc).__name__}: {exc}; NOT queued: {' '.join(paths)}", file=stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``niks3-hook`` program: exits 0 whatever happens."""
    try:
        return run_hook(sys.argv[1:] if argv is None else argv, os.environ, sys.stderr)
    except BaseException as exc:  # even an interrupt must not fail the build
        try:  # noqa: SIM105 -- contextlib costs an import
            print(f"niks3 hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        except Exception:  # noqa: S110 -- stderr itself may be gone
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
