"""The shape of the package's imports (typing-only imports count too):

- no circle among the modules of niks3d.server (keys.py in particular imports nothing that imports it);
- config.py and secrets.py do not import each other both ways;
- niks3d/devenv holds only what the runtime uses (``niks3d dev``): test and bench helpers live in testkit/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import niks3d

PACKAGE = Path(niks3d.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The niks3d modules ``name`` imports, at run time or for type checking."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from niks3d.server import gc" names a module too
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(nodes: set[str]) -> list[list[str]]:
    """Every import circle within ``nodes`` (as the path that closes it), found by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node] & nodes):
            if state.get(nxt) == 1:
                found.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [node])
    return found


def test_the_server_modules_import_each_other_without_circles() -> None:
    server = {n for n in MODULES if n.startswith("niks3d.server")}
    assert _cycles(server) == []
    assert [m for m in GRAPH["niks3d.server.keys"] if "niks3d.server.keys" in GRAPH[m]] == []


def test_config_and_secrets_do_not_import_each_other_both_ways() -> None:
    assert not ("niks3d.secrets" in GRAPH["niks3d.config"] and "niks3d.config" in GRAPH["niks3d.secrets"])


def test_devenv_holds_only_what_the_runtime_imports() -> None:
    devenv = {n for n in MODULES if n.startswith("niks3d.devenv.")}
    reached: set[str] = set()
    todo = [n for n in MODULES if not n.startswith("niks3d.devenv")]
    while todo:
        for nxt in GRAPH[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    assert sorted(devenv - reached) == [], "test and bench helpers belong in testkit/"
