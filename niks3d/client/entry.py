"""The ``niks3`` console script: ``niks3 hook`` without importing the rest of the client.

Nix runs the post-build hook after every build, so ``niks3 hook`` must start in milliseconds; the other
commands need aiohttp, pydantic and the push machinery, which take a large fraction of a second to import
(docs/client.md). This module looks at the first argument and imports only what that command needs.
"""

from __future__ import annotations

__all__ = ["main"]

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``niks3`` with ``argv`` (default: the process's arguments); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hook"]:
        from niks3d.client.hook import main as hook_main  # noqa: PLC0415 -- the point of this module

        return hook_main(args[1:])
    from niks3d.client.main import main as full_main  # noqa: PLC0415

    return full_main(args)
