"""Pause points for fault tests: a test stops the daemon at a named point to make an outage happen exactly there.

Off unless ``NIKS3D_TEST_HOOKS`` names a directory (read once, at import): then :func:`pause_point` checks for
``<dir>/<name>.armed``; if it is there, it is renamed ``<name>.reached`` and the point waits until the test deletes
that file (at most :data:`LONGEST` seconds), once per arming. Without the variable a pause point costs one
comparison. docs/operations.md ("When PostgreSQL or S3 stops answering") names the test that uses each point.
"""

from __future__ import annotations

__all__ = ["LONGEST", "pause_point"]

import asyncio
import os
import time
from pathlib import Path

_DIR = os.environ.get("NIKS3D_TEST_HOOKS") or None
LONGEST = 60.0


async def pause_point(name: str) -> None:
    """Wait here while a test holds the point ``name`` (nothing happens unless the tests armed it)."""
    if _DIR is None:
        return
    await asyncio.to_thread(_hold, Path(_DIR, f"{name}.armed"), Path(_DIR, f"{name}.reached"))


def _hold(armed: Path, reached: Path) -> None:
    try:
        armed.rename(reached)
    except FileNotFoundError:
        return
    deadline = time.monotonic() + LONGEST
    while reached.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
