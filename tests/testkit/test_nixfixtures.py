"""The Nix fixtures have what they promise: shapes, references, a build log, a content address, salts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from niks3d.errors import ServiceError
from testkit.nixfixtures import Fixtures, build_expr, build_standard_fixtures, make_closure

pytestmark = pytest.mark.nix

NIX_COMMAND = ["--extra-experimental-features", "nix-command", "--option", "substituters", ""]


def references(path: str) -> set[str]:
    out = subprocess.run(["nix-store", "--query", "--references", path], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def path_info(path: str) -> dict[str, object]:
    out = subprocess.run(["nix", "path-info", *NIX_COMMAND, "--json", path], check=True, capture_output=True, text=True)
    info = json.loads(out.stdout)
    if isinstance(info, dict):  # 2.19+: an object keyed by path
        return dict(info[path])
    (entry,) = info  # 2.8: an array of objects
    return dict(entry)


def test_prototest_refers_to_itself_and_protodep(nix_fixtures: Fixtures) -> None:
    assert references(nix_fixtures.prototest) == {nix_fixtures.prototest, nix_fixtures.protodep}
    assert references(nix_fixtures.protodep) == set()


def test_graph_has_two_middles_sharing_a_leaf_and_a_self_reference(nix_fixtures: Fixtures) -> None:
    graph = nix_fixtures.graph
    assert references(graph.top) == {graph.top, graph.middle_a, graph.middle_b}
    assert references(graph.middle_a) == {graph.leaf}
    assert references(graph.middle_b) == {graph.leaf}
    assert references(graph.leaf) == set()


def test_tricky_tree_has_every_corner_case(nix_fixtures: Fixtures) -> None:
    root = Path(nix_fixtures.tricky)
    assert (root / "bin" / "run").stat().st_mode & stat.S_IXUSR
    assert not (root / "plain.txt").stat().st_mode & stat.S_IXUSR
    assert (root / "empty").stat().st_size == 0
    assert list((root / "empty-dir").iterdir()) == []
    assert (root / "nested" / "a" / "b" / "c" / "deep.txt").read_text() == "deep"
    assert (root / "rel-link").readlink() == Path("plain.txt")
    assert (root / "abs-link").readlink() == root / "plain.txt"
    assert not (root / "dangling-rel").exists()
    assert (root / "dangling-rel").is_symlink()
    assert (root / "dangling-abs").readlink().is_absolute()
    assert (root / "sixteen").stat().st_size % 8 == 0
    assert (root / "plain.txt").stat().st_size % 8 != 0
    names = {p.name for p in (root / "names").iterdir()}
    for name in ("a+b", "q?x", "k=v", ".hidden", "_under", "-dash", "dots.in.name", "UPPER", "lower"):
        assert name in names
    top = sorted(os.fsencode(p.name) for p in root.iterdir())
    assert top.index(b"Zeta") < top.index(b"alpha") and top.index(b"Beta") < top.index(b"beta")


def test_odd_names_include_control_and_non_utf8_bytes(nix_fixtures: Fixtures) -> None:
    names = {os.fsencode(p.name) for p in Path(nix_fixtures.odd_names).iterdir()}
    assert {b"tab\tname", b"nl\nname", b"del\x7fx", b"latin1-\xe9t\xe9", b"invalid-\x80\xc0"} <= names


def test_large_fixture_holds_one_file_of_the_requested_size(nix_fixtures: Fixtures) -> None:
    assert (Path(nix_fixtures.large) / "blob").stat().st_size == 8 << 20


def test_with_log_has_a_build_log_nix_can_read(nix_fixtures: Fixtures) -> None:
    drv = nix_fixtures.with_log_drv
    assert drv.endswith("-with-log.drv")
    assert Path(drv).exists()
    base = Path(drv).name
    assert list(Path("/nix/var/log/nix/drvs", base[:2]).glob(base[2:] + "*"))
    log = subprocess.run(["nix-store", "--read-log", drv], check=True, capture_output=True, text=True).stdout
    assert "fixture stdout line 1" in log
    assert "fixture stderr line 3" in log


def test_ca_path_is_content_addressed(nix_fixtures: Fixtures) -> None:
    info = path_info(nix_fixtures.ca_path)
    assert str(info["ca"]).startswith("fixed:r:sha256:")
    assert Path(nix_fixtures.ca_path).read_text() == "hello\n"


def test_salt_gives_fresh_paths_with_fresh_contents(tmp_path: Path, nix_fixtures: Fixtures) -> None:
    salted = build_standard_fixtures(tmp_path, salt=f"t{os.getpid()}", large_mib=1)
    assert set(salted.all_paths()).isdisjoint(nix_fixtures.all_paths())
    assert references(salted.prototest) == {salted.prototest, salted.protodep}
    assert Path(salted.protodep).read_text() != Path(nix_fixtures.protodep).read_text()
    assert Path(salted.ca_path).read_text() != "hello\n"
    assert (Path(salted.large) / "blob").stat().st_size == 1 << 20
    with pytest.raises(ValueError, match="salt"):
        build_standard_fixtures(tmp_path, salt="bad salt;")


def test_make_closure_builds_a_referenced_tree_of_about_the_requested_size(tmp_path: Path) -> None:
    paths = make_closure(tmp_path, f"c{os.getpid()}", 7, 70_000)
    assert len(paths) == 7
    assert references(paths[0]) == {paths[1], paths[2]}
    assert references(paths[2]) == {paths[5], paths[6]}
    closure = subprocess.run(["nix-store", "--query", "--requisites", paths[0]], capture_output=True, text=True)
    assert set(closure.stdout.split()) == set(paths)
    total = sum((Path(p) / "data").stat().st_size for p in paths)
    assert total == 7 * 10_000


def test_build_failure_raises_service_error_with_the_stderr_tail(tmp_path: Path) -> None:
    expr = 'derivation { name = "fails"; system = builtins.currentSystem; builder = "/bin/sh"; '
    expr += 'args = [ "-c" "echo this-build-breaks >&2; exit 3" ]; }'
    with pytest.raises(ServiceError, match=r"^nix-build .*--no-out-link.* exited with status 100: ") as info:
        build_expr(expr, tmp_path)
    assert "this-build-breaks" in str(info.value)
