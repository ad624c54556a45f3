"""Pure parts of the import: which narinfos can be registered as they are, the quarantine order, pin files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from niks3d.cli.import_ import read_pin_file
from niks3d.errors import Niks3Error
from niks3d.importer.inventory import Inventory
from niks3d.importer.quarantine import referrers_first
from niks3d.importer.reading import check_narinfo
from niks3d.nix import nix32
from niks3d.nix.signing import SecretKey

H = "0" * 31 + "1"
R = "0" * 31 + "2"
NAR = "nar/" + nix32.encode(b"\x01" * 32) + ".nar.xz"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _narinfo(**changes: str) -> bytes:
    fields = {
        "StorePath": f"/nix/store/{H}-hello",
        "URL": NAR,
        "Compression": "xz",
        "FileHash": "sha256:" + nix32.encode(b"\x02" * 32),
        "FileSize": "100",
        "NarHash": "sha256:" + nix32.encode(b"\x03" * 32),
        "NarSize": "200",
        "References": f"{R}-dep",
        "Sig": "old:" + "A" * 86 + "==",
    }
    fields.update(changes)
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v != "-").encode()


def _inventory(nar_size: int | None = 100) -> Inventory:
    inv = Inventory()
    if nar_size is not None:
        inv.objects[NAR] = ("nar", nar_size, NOW)
    return inv


def test_a_complete_narinfo_is_staged_with_its_own_bytes():
    staged, problem = check_narinfo(f"{H}.narinfo", _narinfo(), _inventory())
    assert problem is None and staged is not None
    assert staged.narinfo == _narinfo().decode() and staged.refs == (R,) and staged.compression == "xz"


@pytest.mark.parametrize(
    ("body", "nar_size", "kind"),
    [
        (b"garbage\n", 100, "unparsable"),
        (_narinfo(StorePath=f"/nix/store/{R}-other"), 100, "wrong_key"),
        (_narinfo(FileHash="-"), 100, "unparsable"),
        (_narinfo(URL="elsewhere/x.nar"), 100, "unparsable"),
        (_narinfo(), None, "nar_missing"),
        (_narinfo(), 99, "nar_size"),
    ],
)
def test_what_cannot_be_registered_is_a_problem_of_its_kind(body, nar_size, kind):
    staged, problem = check_narinfo(f"{H}.narinfo", body, _inventory(nar_size))
    assert staged is None and problem is not None and problem.kind == kind and problem.key == f"{H}.narinfo"


def test_resigning_keeps_the_old_signature_and_adds_ours():
    key = SecretKey.generate("server-1")
    staged, _ = check_narinfo(f"{H}.narinfo", _narinfo(), _inventory(), [key])
    assert staged is not None
    sigs = [line for line in staged.narinfo.splitlines() if line.startswith("Sig: ")]
    assert len(sigs) == 2 and any(s.startswith("Sig: server-1:") for s in sigs)


def test_a_narinfo_spelled_otherwise_is_re_rendered_so_the_database_accepts_it():
    staged, _ = check_narinfo(f"{H}.narinfo", _narinfo(FileHash="sha256:" + "02" * 32), _inventory())
    want = "FileHash: sha256:" + nix32.encode(b"\x02" * 32) + "\n"
    assert staged is not None and want in staged.narinfo and "02" * 32 not in staged.narinfo


def test_quarantine_moves_referrers_before_their_references():
    a, b, c = ("a" * 32, "b" * 32, "c" * 32)  # c references b references a
    refs = {c: (b, c), b: (a,), a: ()}
    order = referrers_first([f"{a}.narinfo", f"{b}.narinfo", f"{c}.narinfo"], refs)
    assert order == [f"{c}.narinfo", f"{b}.narinfo", f"{a}.narinfo"]


def test_pin_files_list_store_paths_and_say_where_one_is_wrong(tmp_path: Path):
    good = tmp_path / "good"
    good.write_text(f"# release\n\n/nix/store/{H}-hello\n")
    assert [p.hash for p in read_pin_file(good)] == [H]
    bad = tmp_path / "bad"
    bad.write_text(f"/nix/store/{H}-hello\n/tmp/not-a-store-path\n")
    with pytest.raises(Niks3Error, match=r"bad:2"):
        read_pin_file(bad)
