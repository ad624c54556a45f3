"""With NIKS3_REQUIRE_SERVICES=1 (CI) a missing service must fail a test, not skip it: tests skip only through
tests.fixtures.environ.require_service (or a ServiceGate), never with a bare ``pytest.skip``."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
# Skips that are not about a service CI provides, with the reason.
ALLOWED = {
    "fixtures/environ.py": "require_service itself",
    "client/test_upload_queue.py": "dropping root needs setpriv; not a service of the test environment",
}


def test_no_test_skips_by_hand() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.relative_to(TESTS).as_posix() in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "skip"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "pytest"
            ):
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert offenders == [], "skip through tests.fixtures.environ.require_service: " + ", ".join(offenders)
