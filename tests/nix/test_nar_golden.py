"""Golden tests against real Nix: our NAR bytes, NarHash/NarSize and .ls listing equal what Nix makes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import parse_listing, render_listing
from niks3d.nix.nar import NarResult
from niks3d.nix.nar_dump import NarDumper
from niks3d.nix.nar_read import NarValidator
from testkit.nixfixtures import Fixtures

pytestmark = pytest.mark.nix

FIXTURES = [
    "prototest",
    "protodep",
    "tricky",
    "odd_names",
    "graph.top",
    "graph.middle_a",
    "graph.leaf",
    "large",
    "with_log",
    "ca_path",
]

NIX_COMMAND = ["--extra-experimental-features", "nix-command", "--option", "substituters", ""]


def store_path(fixtures: Fixtures, which: str) -> str:
    value: object = fixtures
    for part in which.split("."):
        value = getattr(value, part)
    assert isinstance(value, str)
    return value


def ours(path: str) -> tuple[bytes, NarResult]:
    dumper = NarDumper(path, chunk_size=64 << 10)
    data = b"".join(dumper)
    return data, dumper.result


def nix_dump(path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout


def nix_query(flag: str, path: str) -> str:
    return subprocess.run(
        ["nix-store", "--query", flag, path], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def nix_cache(nix_fixtures: Fixtures, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file:// binary cache that real Nix filled with every fixture, NAR listings included."""
    cache = tmp_path_factory.mktemp("nix-copy-cache")
    url = f"file://{cache}?write-nar-listing=1&compression=none"
    subprocess.run(
        ["nix", "copy", *NIX_COMMAND, "--to", url, *nix_fixtures.all_paths()], check=True, capture_output=True
    )
    return cache


@pytest.mark.parametrize("which", FIXTURES)
def test_nar_bytes_equal_nix_store_dump(nix_fixtures: Fixtures, which: str) -> None:
    path = store_path(nix_fixtures, which)
    data, _ = ours(path)
    expected = nix_dump(path)
    assert len(data) == len(expected)
    assert data == expected


@pytest.mark.parametrize("which", FIXTURES)
def test_hash_and_size_equal_nix_store_query(nix_fixtures: Fixtures, which: str) -> None:
    path = store_path(nix_fixtures, which)
    _, result = ours(path)
    assert format_sha256(result.nar_hash) == nix_query("--hash", path)
    assert str(result.nar_size) == nix_query("--size", path)


@pytest.mark.parametrize("which", FIXTURES)
def test_listing_equals_the_ls_nix_copy_writes(nix_fixtures: Fixtures, nix_cache: Path, which: str) -> None:
    path = store_path(nix_fixtures, which)
    _, result = ours(path)
    written_by_nix = (nix_cache / f"{Path(path).name[:32]}.ls").read_bytes()
    assert result.listing_file() == written_by_nix


@pytest.mark.parametrize("which", FIXTURES)
def test_parsing_the_ls_nix_copy_writes_gives_back_its_bytes(
    nix_fixtures: Fixtures, nix_cache: Path, which: str
) -> None:
    """What niks3d compares a PUT listing by (docs/security.md, rule 8): Nix's own, odd names included."""
    path = store_path(nix_fixtures, which)
    written_by_nix = (nix_cache / f"{Path(path).name[:32]}.ls").read_bytes()
    assert render_listing(parse_listing(written_by_nix)) == written_by_nix


@pytest.mark.parametrize("which", FIXTURES)
def test_validator_accepts_nix_dump_with_the_same_result(nix_fixtures: Fixtures, which: str) -> None:
    path = store_path(nix_fixtures, which)
    _, expected = ours(path)
    validator = NarValidator(listing=True)
    with subprocess.Popen(["nix-store", "--dump", path], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(50_000):
            validator.feed(chunk)
    assert proc.returncode == 0
    assert validator.finish() == expected


def test_prototest_gives_the_documented_paths_hashes_and_listing(nix_fixtures: Fixtures) -> None:
    assert nix_fixtures.prototest == "/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"
    assert nix_fixtures.protodep == "/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
    assert nix_fixtures.ca_path == "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    documented = {
        nix_fixtures.prototest: ("sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy", 2072),
        nix_fixtures.protodep: ("sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk", 128),
        nix_fixtures.ca_path: ("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", 120),
    }
    for path, (nar_hash, nar_size) in documented.items():
        _, result = ours(path)
        assert (format_sha256(result.nar_hash), result.nar_size) == (nar_hash, nar_size), path
    _, proto = ours(nix_fixtures.prototest)
    assert proto.listing_file() == (
        b'{"version":1,"root":{"type":"directory","entries":{"bin":{"type":"directory","entries":{"hi":{"type":'
        b'"regular","size":18,"executable":true,"narOffset":400}}},"link":{"type":"symlink","target":"bin/hi"},'
        b'"selfref":{"type":"symlink","target":"/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0/share"'
        b'},"share":{"type":"directory","entries":{"Zeta":{"type":"directory","entries":{}},"alpha":{"type":'
        b'"directory","entries":{"one":{"type":"regular","size":1,"narOffset":1520}}},"empty":{"type":"regular"'
        b',"size":0,"narOffset":1744},"ref.txt":{"type":"regular","size":57,"narOffset":1928}}}}}}'
    )
    _, dep = ours(nix_fixtures.protodep)
    assert dep.listing_file() == b'{"version":1,"root":{"type":"regular","size":16,"narOffset":96}}'


def test_odd_names_listing_keeps_raw_bytes_and_nix_escapes(nix_fixtures: Fixtures, nix_cache: Path) -> None:
    written_by_nix = (nix_cache / f"{Path(nix_fixtures.odd_names).name[:32]}.ls").read_bytes()
    for fragment in (
        b'"back\\\\slash"',
        b'"bell\\u0007ff\\u000c"',
        b'"cr\\rname"',
        b'"del\x7fx"',
        b'"invalid-\x80\xc0"',
        b'"quote\\"name"',
        b'"target\\twith\\u0001ctl\xff\\"q\\\\b"',
    ):
        assert fragment in written_by_nix
    _, result = ours(nix_fixtures.odd_names)
    assert result.listing_file() == written_by_nix
