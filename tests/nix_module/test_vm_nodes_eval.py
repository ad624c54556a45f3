"""The module-evaluation harness (``nix/eval-module.nix``) with a real nixpkgs lib: every scenario as expected,
every node of every VM test in ``nix/tests`` and both examples evaluated, and a deliberately wrong option (in a
copy of a VM test, in a node and in a test script) failing the evaluation.

nixpkgs' lib is not part of the repository; ``NIKS3_NIXPKGS_LIB`` names a checkout's ``lib`` directory (the
``lib`` of github:nix-community/nixpkgs.lib is enough). Without it these tests are skipped (the flake's
checks.module-eval runs the same harness with the flake's nixpkgs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.nix_module.nixeval import ROOT

LIB_ENV = "NIKS3_NIXPKGS_LIB"
_LIB = os.environ.get(LIB_ENV)  # read at import: the autouse fixture scrubs NIKS3_* before each test
pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(not _LIB, reason=f"{LIB_ENV} (a nixpkgs lib directory) is not set"),
]


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["nix-instantiate", "--eval", "--strict", "--json", "nix/eval-module.nix"]
    argv += ["--arg", "lib", f"import {_LIB}", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)


def _results(*args: str) -> dict[str, Any]:
    proc = _evaluate(*args)
    assert proc.returncode == 0, proc.stderr
    results: dict[str, Any] = json.loads(proc.stdout)
    return results


def _nodes(test: Path) -> set[str]:
    """The node names a VM test file declares (``nodes = { name = ...; }``, read from its text)."""
    text = test.read_text()
    body = text[text.index("nodes = {") :]
    names, depth = set(), 0
    for line in body.splitlines()[1:]:
        stripped = line.strip()
        if depth == 0 and stripped.startswith("};"):
            break
        if depth == 0 and "=" in stripped:
            names.add(stripped.split("=", 1)[0].strip())
        depth += stripped.count("{") - stripped.count("}")
    return names


def test_every_scenario_every_vm_test_node_and_both_examples_evaluate_as_expected() -> None:
    results = _results()
    assert {name for name, r in results.items() if not r["asExpected"]} == set()
    tests = sorted(p for p in (ROOT / "nix/tests").glob("*.nix"))
    assert tests
    for test in tests:
        for node in _nodes(test):
            assert results[f"vm-{test.stem}-{node}"]["outcome"] == "ok", (test.name, node)
    assert results["examples-nixos-configuration"]["outcome"] == "ok"
    assert results["examples-nixos-external-s3"]["outcome"] == "ok"
    assert results["examples-nixos-flake-host"]["outcome"] == "ok"


def _copy_of_tests(tmp_path: Path) -> Path:
    copy = tmp_path / "tests"
    shutil.copytree(ROOT / "nix/tests", copy)
    return copy


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A misspelt option of ours in a node: the root freeform type would take it silently.
        ('services.niks3.settings.s3.verify = "full";', "services.niks3.openFirewal = true;", "openFirewal"),
        # A test script that reads an option which is not there.
        ("settings = nodes.server.services.niks3.settings;", "settings = nodes.server.services.niks3.setings;", ""),
    ],
)
def test_a_wrong_option_in_a_copy_of_a_vm_test_fails_the_evaluation(tmp_path, old, new, message) -> None:
    copy = _copy_of_tests(tmp_path)
    push = copy / "push.nix"
    text = push.read_text()
    assert old in text
    push.write_text(text.replace(old, new))
    proc = _evaluate("--arg", "vmTests", str(copy), "--argstr", "inspect", "vm-push-server")
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr
    # The unchanged copy evaluates: the failure is the wrong option's.
    push.write_text(text)
    assert _evaluate("--arg", "vmTests", str(copy), "--argstr", "inspect", "vm-push-server").returncode == 0
