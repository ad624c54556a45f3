"""The fixture plugins every test can use; fixtures themselves live in ``tests/fixtures/``."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.environ",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.nix",
    "tests.fixtures.modern_nix",
    "tests.fixtures.daemon",
    "tests.fixtures.own",
]
