"""Adopting an existing bucket (``niks3d import``) and checking the cache against the database
(``niks3d fsck``): docs/operations.md."""

from __future__ import annotations

__all__ = ["ImportParams", "Problem", "Report", "run_import"]

from niks3d.importer.problems import Problem, Report
from niks3d.importer.run import ImportParams, run_import
