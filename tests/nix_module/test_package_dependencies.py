"""The Nix package (``nix/package.nix``) depends on exactly the Python packages pyproject.toml declares (the
runtime dependencies and the ``systemd`` extra), so the packaged niks3d cannot miss a module that the venv has.

The list is read from package.nix's text, and the real ``nix-instantiate`` then evaluates the package with a
stub package set holding exactly those names, which proves that the text read is the list Nix sees."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.nix_module.nixeval import ROOT, nix_eval

_BLOCK = re.compile(r"dependencies = with python3Packages; \[(.*?)\n  \];", re.S)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["systemd"]]
    return {_normalized(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in requirements}


def _package_names() -> list[str]:
    match = _BLOCK.search((ROOT / "nix/package.nix").read_text())
    assert match, "nix/package.nix has no `dependencies = with python3Packages; [ ... ];` block"
    names = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("(python3Packages."):  # `(python3Packages.a or python3Packages.b)`: the first name
            line = line.removeprefix("(python3Packages.").split()[0]
        if line:
            assert _NAME.fullmatch(line), f"unexpected entry in package.nix's dependencies: {line!r}"
            names.append(line)
    return names


def test_the_package_declares_exactly_pyprojects_dependencies() -> None:
    names = _package_names()
    assert len(names) == len(set(names))
    assert {_normalized(n) for n in names} == _pyproject_names()


@pytest.mark.nix
def test_nix_sees_the_same_dependency_list() -> None:
    names = _package_names()
    stub = "{ " + " ".join(f'"{n}" = "{n}";' for n in names) + " buildPythonApplication = args: args; }"
    lib = "{ importTOML = f: builtins.fromTOML (builtins.readFile f); }"
    expr = f"(import ./nix/package.nix {{ lib = {lib}; python3Packages = {stub}; }}).passthru.pythonDependencies"
    assert nix_eval(expr) == names
