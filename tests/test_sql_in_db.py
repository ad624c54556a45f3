"""All SQL of the PostgreSQL database lives in niks3d/db/ (docs/architecture.md): no module outside it runs a
statement, and db/ imports nothing of the domain or the HTTP layer above it.

niks3d/client/ is left out: its statements are the client's own SQLite queue and Nix's local SQLite store
database, not PostgreSQL.
"""

from __future__ import annotations

import ast
from pathlib import Path

import niks3d

PACKAGE = Path(niks3d.__file__).parent
_STATEMENTS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "copy_records_to_table", "copy_to_table"}
_OUTSIDE = ("client/",)
_ABOVE_DB = ("niks3d.gc", "niks3d.uploads", "niks3d.server", "niks3d.cli", "niks3d.importer", "niks3d.fsck")


def _files() -> list[tuple[str, ast.AST]]:
    return [
        (p.relative_to(PACKAGE).as_posix(), ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))
    ]


def test_no_statement_outside_db() -> None:
    offenders = []
    for rel, tree in _files():
        if rel.startswith(("db/", *_OUTSIDE)):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _STATEMENTS:
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant | ast.JoinedStr):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], "move these statements into a query module under niks3d/db/: " + ", ".join(offenders)


def test_db_imports_nothing_above_it() -> None:
    offenders = []
    for rel, tree in _files():
        if not rel.startswith("db/"):
            continue
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n.startswith(_ABOVE_DB)]
    assert offenders == [], "db/ must not import the layers above it: " + ", ".join(offenders)
