"""Garbage collection: delete what no live root, pin or open upload session needs, without racing pushes.

:func:`claim_run` takes the collector's lock and records a run; :func:`collect` does the run. ``docs/gc.md``
describes the algorithm, its phases and the fencing against concurrent pushes.
"""

from __future__ import annotations

__all__ = [
    "GcContext",
    "GcParams",
    "GcRunning",
    "RunRow",
    "claim_run",
    "collect",
    "delete_path",
]

from niks3d.db.gc.runs import RunRow
from niks3d.gc.collector import GcContext, claim_run, collect
from niks3d.gc.delete import delete_path
from niks3d.gc.runs import GcParams, GcRunning
