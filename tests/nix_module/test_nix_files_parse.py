"""Every ``.nix`` file of the repository parses with ``nix-instantiate --parse``, as CI checks too; the NixOS
module, the flake and the VM tests cannot be evaluated here (no nixpkgs), so this is their first line of defence."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nix_module.nixeval import ROOT

pytestmark = pytest.mark.nix

_SKIPPED_DIRS = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}


def _nix_files() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.nix")
        if path.is_file() and not _SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
    )


def _parse(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False)


def test_the_module_flake_and_vm_tests_are_among_the_files_checked() -> None:
    names = {str(path.relative_to(ROOT)) for path in _nix_files()}
    for expected in ("flake.nix", "nix/module.nix", "nix/render.nix", "nix/example.nix", "nix/tests/push.nix"):
        assert expected in names


@pytest.mark.parametrize("path", _nix_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_nix_file_parses(path: Path) -> None:
    result = _parse(path)
    assert result.returncode == 0, f"{path.relative_to(ROOT)} does not parse:\n{result.stderr}"


def test_a_syntax_error_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nix"
    broken.write_text("{ services.niks3 = { enable = true; }\n")
    result = _parse(broken)
    assert result.returncode != 0
    assert "syntax error" in result.stderr
