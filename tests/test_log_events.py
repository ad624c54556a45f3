"""Structured log fields go through ``log_event`` everywhere: a logger call with ``extra=`` can put fields where
neither the journal nor the JSON lines read them (``extra={"event": ..., "version": 3}`` outside ``fields``)."""

from __future__ import annotations

import ast
from pathlib import Path

import niks3d

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def test_no_logger_call_in_niks3d_passes_extra() -> None:
    offenders = []
    root = Path(niks3d.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and any(k.arg == "extra" for k in node.keywords)
                and path.name != "logsetup.py"  # log_event itself
            ):
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert offenders == [], "use niks3d.logsetup.log_event for structured fields: " + ", ".join(offenders)
