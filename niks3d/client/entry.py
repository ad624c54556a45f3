"""The ``niks3`` console script: ``niks3 hook`` without importing the rest of the client.

Nix runs the post-build hook after every build, so ``niks3 hook`` must start in milliseconds; the other
commands need aiohttp, pydantic and the push machinery, which take a large fraction of a second to import
(docs/client.md). This module looks at the first argument and imports only what that command needs.
"""

from __future__ import annotations

__all__ = ["main"]

import gc
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``niks3`` with ``argv`` (default: the process's arguments); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hook"]:
        from niks3d.client.hook import main as hook_main  # noqa: PLC0415 -- the point of this module

        return hook_main(args[1:])
    # The imports make some 100,000 objects that live as long as the process: the cyclic garbage collector,
    # run while they are made and again later over all of them, finds nothing to free and cost ~0.04 s of CPU
    # a push (issue 18). Off while importing, then they are moved out of its reach (gc.freeze).
    gc.disable()
    try:
        from niks3d.client.main import main as full_main  # noqa: PLC0415
    finally:
        gc.freeze()
        gc.enable()
    return full_main(args)
