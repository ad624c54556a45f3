"""Evaluate Nix expressions of the repository with the real ``nix-instantiate``, for the tests of ``nix/``."""

from __future__ import annotations

__all__ = ["ROOT", "nix_eval", "render"]

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def nix_eval(expr: str) -> Any:
    """The value of ``expr`` (evaluated with ``ROOT`` as the current directory), through JSON."""
    argv = ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr]
    out = subprocess.run(argv, cwd=ROOT, check=False, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stderr}"
    return json.loads(out.stdout)


def render(cfg_expr: str = "(import ./nix/example.nix).services.niks3") -> dict[str, Any]:
    """What ``nix/render.nix`` (the module's renderer) makes of the services.niks3 value ``cfg_expr``."""
    result: dict[str, Any] = nix_eval(f"import ./nix/render.nix ({cfg_expr})")
    return result
