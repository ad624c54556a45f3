"""Reading the local store: ./result links, build logs, CA realisations.

Covers store.py, buildlogs.py and realisations.py.
"""

from __future__ import annotations

import bz2
import json
import sqlite3
import subprocess

import pytest
import zstandard

from niks3d.client.buildlogs import compress_log, find_build_log
from niks3d.client.closure import PathInfo, closure_from_db, parse_path_info_json, path_info_argv
from niks3d.client.realisations import query_build_traces, query_realisations
from niks3d.client.store import LocalStore, resolve_store_path
from niks3d.errors import ClientError
from niks3d.nix.storepath import StorePath
from testkit.nixfixtures import CA_NIX, build_ca_closure
from tests.fixtures.environ import require_service

SOME_PATH = "/nix/store/" + "a" * 32 + "-some-path"
DRV = StorePath.parse("/nix/store/lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv")


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def test_result_links_are_followed_into_the_store_and_no_further(tmp_path):
    (tmp_path / "result").symlink_to(SOME_PATH)
    (tmp_path / "chain").symlink_to("result")
    (tmp_path / "inside").symlink_to(SOME_PATH + "/bin/tool")
    store = LocalStore.system()
    for arg in ("result", "chain", "inside", str(tmp_path / "result"), SOME_PATH, SOME_PATH + "/"):
        assert resolve_store_path(arg, store, cwd=str(tmp_path), must_exist=False).path == SOME_PATH


def test_paths_outside_the_store_are_refused_by_name(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "bad").symlink_to("/nix/store/not-a-store-path")
    store = LocalStore.system()
    with pytest.raises(ClientError, match="'file' is neither a store path nor a symlink"):
        resolve_store_path("file", store, cwd=str(tmp_path))
    with pytest.raises(ClientError, match="'missing' does not exist"):
        resolve_store_path("missing", store, cwd=str(tmp_path))
    with pytest.raises(ClientError, match="too many levels"):
        resolve_store_path("loop", store, cwd=str(tmp_path))
    with pytest.raises(ClientError, match="not a valid store path"):
        resolve_store_path("bad", store, cwd=str(tmp_path))


def test_a_path_missing_from_the_store_is_refused():
    with pytest.raises(ClientError, match="is not in /nix/store"):
        resolve_store_path(SOME_PATH, LocalStore.system())


def test_log_files_are_found_compressed_or_plain(tmp_path):
    store = LocalStore(root=None, log_dir=tmp_path, state_dir=tmp_path)
    assert find_build_log(DRV, store) is None
    directory = tmp_path / "drvs" / DRV.basename[:2]
    directory.mkdir(parents=True)
    plain = directory / DRV.basename[2:]
    plain.write_text("plain log\n")
    assert find_build_log(DRV, store) == plain
    packed = directory / (DRV.basename[2:] + ".bz2")
    packed.write_bytes(bz2.compress(b"bz2 log\n"))
    assert find_build_log(DRV, store) == packed  # Nix's default wins when both exist

    out: list[bytes] = []
    assert compress_log(packed, out.append) == len(b"bz2 log\n")
    assert _unzstd(b"".join(out)) == b"bz2 log\n"
    out.clear()
    compress_log(plain, out.append)
    assert _unzstd(b"".join(out)) == b"plain log\n"


def test_a_corrupt_bz2_log_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "x.drv.bz2"
    bad.write_bytes(b"BZh9 not really")
    with pytest.raises(ClientError, match=str(bad)):
        compress_log(bad, lambda _: None)


@pytest.mark.nix
def test_the_real_build_log_is_found_and_recompressed(nix_fixtures):
    drv = StorePath.parse(nix_fixtures.with_log_drv)
    found = find_build_log(drv, LocalStore.system())
    assert found is not None
    out: list[bytes] = []
    compress_log(found, out.append)
    want = subprocess.run(["nix-store", "--read-log", drv.path], check=True, capture_output=True).stdout
    assert _unzstd(b"".join(out)) == want
    assert b"fixture stdout line 3" in want


def test_a_store_without_ca_tables_has_no_realisations(tmp_path):
    assert query_realisations(tmp_path / "missing.sqlite", [DRV]) == {}
    assert query_build_traces(tmp_path / "missing.sqlite", [DRV]) == {}


def test_build_trace_entries_are_read_as_nix_2_35_records_them(tmp_path, caplog):
    """``BuildTraceV3`` (Nix 2.35: drv basename, output, full output path); a bad row is skipped with a warning."""
    out = StorePath.parse("/nix/store/" + "b" * 32 + "-out")
    other = StorePath.parse("/nix/store/" + "c" * 32 + "-other")
    drv, resolved = "d" * 32 + "-out.drv", "f" * 32 + "-out.drv"
    db = tmp_path / "db.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE ValidPaths (id integer primary key, path text)")
        conn.execute(
            "CREATE TABLE BuildTraceV3 (id integer primary key autoincrement not null, drvPath text not null, "
            "outputName text not null, outputPath text not null, signatures text)"
        )
        rows = [(drv, "out", out.path), (resolved, "out", out.path), (drv, "dev", other.path)]
        rows += [("not-a-drv", "out", out.path), (resolved, "a/b", out.path)]
        conn.executemany("INSERT INTO BuildTraceV3 (drvPath, outputName, outputPath) VALUES (?, ?, ?)", rows)
    conn.close()
    assert query_build_traces(db, [out]) == {out: [(drv, "out"), (resolved, "out")]}
    assert query_build_traces(db, [out, other])[other] == [(drv, "dev")]
    assert "not-a-drv" in caplog.text and "a/b" in caplog.text
    assert query_realisations(db, [out]) == {}  # a 2.35 store without the older tables


@pytest.fixture(scope="module")
def ca_store(tmp_path_factory, pytestconfig):
    """A chroot store with two CA derivations built in it (needs the sandbox to find /bin/sh)."""
    root = tmp_path_factory.mktemp("ca-store")
    build = build_ca_closure(root, root / "root", "")
    if build.returncode != 0:  # a skip only without NIKS3_REQUIRE_SERVICES=1 (CI fails instead)
        require_service(pytestconfig, "a chroot store that builds CA derivations", build.stderr[-500:])
    info = subprocess.run(
        [
            "nix",
            *CA_NIX,
            "realisation",
            "info",
            "--store",
            str(root / "root"),
            "--json",
            "-f",
            str(root / "ca.nix"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return root, build.stdout.strip(), json.loads(info.stdout)


@pytest.mark.nix
def test_realisations_are_read_from_the_store_database_as_nix_reports_them(ca_store):
    root, out_path, nix_realisations = ca_store
    store = LocalStore.chroot(root / "root")
    found = query_realisations(store.db_path, [StorePath.parse(out_path)])
    ours = {r.id: r for r in found[StorePath.parse(out_path)]}
    for real in nix_realisations:
        assert real["id"] in ours
        mine = ours[real["id"]].to_json()
        assert mine["out_path"] == "/nix/store/" + real["outPath"]
        assert mine["dependent_realisations"] == {
            k: "/nix/store/" + v for k, v in real["dependentRealisations"].items()
        }


def _path_info(store: LocalStore, paths: list[StorePath]) -> dict[StorePath, PathInfo]:
    argv = path_info_argv(paths, store)
    return parse_path_info_json(subprocess.run(argv, capture_output=True, check=True).stdout)


@pytest.mark.nix
def test_the_closure_from_the_store_database_is_what_nix_path_info_reports(nix_fixtures):
    store = LocalStore.system()
    roots = [StorePath.parse(p) for p in (nix_fixtures.prototest, nix_fixtures.ca_path, nix_fixtures.with_log)]
    ours = closure_from_db(store.db_path, roots)
    assert ours is not None and len(ours) > len(roots)
    assert ours == _path_info(store, roots)
    assert any(info.ca for info in ours.values()) and any(info.deriver for info in ours.values())


@pytest.mark.nix
def test_the_closure_of_a_chroot_store_from_its_database(ca_store):
    root, out_path, _ = ca_store
    store = LocalStore.chroot(root / "root")
    roots = [StorePath.parse(out_path)]
    ours = closure_from_db(store.db_path, roots)
    assert ours is not None and ours == _path_info(store, roots)


def test_without_a_readable_store_database_nix_path_info_is_asked(tmp_path, nix_fixtures):
    root = StorePath.parse(nix_fixtures.prototest)
    assert closure_from_db(tmp_path / "none.sqlite", [root]) is None
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    assert closure_from_db(tmp_path / "other.sqlite", [root]) is None  # another schema
    missing = StorePath.parse("/nix/store/" + "a" * 32 + "-not-there")
    assert closure_from_db(LocalStore.system().db_path, [missing]) is None  # not valid: nix says so


def test_the_closure_is_read_from_one_snapshot_of_the_store_database(tmp_path, monkeypatch):
    """A nix-daemon that collects paths between the two statements must not leave a path without its references:
    both read one snapshot (the store's database is in WAL mode, where a writer does not wait for readers)."""
    db = tmp_path / "db.sqlite"
    top, dep = (StorePath.parse(f"/nix/store/{c * 32}-{name}") for c, name in (("a", "top"), ("b", "dep")))
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(
        "CREATE TABLE ValidPaths (id integer primary key, path text, hash text, narSize integer, deriver text, "
        "ca text, sigs text)"
    )
    setup.execute("CREATE TABLE Refs (referrer integer, reference integer)")
    for row_id, path in ((1, top), (2, dep)):
        setup.execute(
            "INSERT INTO ValidPaths VALUES (?, ?, ?, 1000, NULL, NULL, NULL)", (row_id, path.path, "sha256:" + "0" * 64)
        )
    setup.execute("INSERT INTO Refs VALUES (1, 2)")
    setup.commit()

    class CollectedMeanwhile(sqlite3.Connection):
        def execute(self, sql, *args):  # type: ignore[override]
            if "r.referrer IN" in sql:  # the second statement: the garbage collector ran in between
                setup.execute("DELETE FROM Refs")
                setup.execute("DELETE FROM ValidPaths")
                setup.commit()
            return super().execute(sql, *args)

    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, **kw, factory=CollectedMeanwhile))
    closure = closure_from_db(db, [top])
    assert closure is not None and closure[top].references == (dep,)
    assert closure[dep].references == ()
