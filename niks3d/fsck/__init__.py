"""Checking that the database and the bucket agree (``niks3d fsck``): docs/operations.md."""

from __future__ import annotations

__all__ = ["FsckParams", "run_fsck"]

from niks3d.fsck.check import FsckParams, run_fsck
