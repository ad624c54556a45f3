"""``single_file_contents``: the bytes of a NAR that is one regular file (how niks3d reads a ``.drv`` it holds as
a NAR, docs/security.md rule 3), and None for every other NAR, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from niks3d.nix.nar import single_file_contents
from niks3d.nix.nar_dump import dump_path


def _nar(path: Path) -> bytes:
    out = bytearray()
    dump_path(path, out.extend, listing=False)
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 4096 + 3])
def test_the_contents_of_a_regular_file_come_back_exactly(tmp_path, size):
    f = tmp_path / "x.drv"
    f.write_bytes(bytes(range(256)) * (size // 256) + b"D" * (size % 256))
    assert single_file_contents(_nar(f)) == f.read_bytes()


def test_anything_else_is_none(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"Derive()")
    nar = _nar(f)
    f.chmod(0o755)
    assert single_file_contents(_nar(f)) is None  # executable
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"Derive()")
    assert single_file_contents(_nar(tmp_path / "d")) is None  # a directory
    (tmp_path / "l").symlink_to("f")
    assert single_file_contents(_nar(tmp_path / "l")) is None  # a symlink
    assert single_file_contents(nar + b"\0" * 8) is None  # trailing bytes
    assert single_file_contents(nar[:-1]) is None  # truncated
    assert single_file_contents(nar[:-16] + nar[-8:] + nar[-16:-8]) is None  # not the closing tag
    assert single_file_contents(b"") is None
