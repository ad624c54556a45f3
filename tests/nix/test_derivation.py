"""Store derivations: the ATerm reader and the text store path that proves a .drv file is what it claims."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from niks3d.nix.derivation import InvalidDerivation, parse_derivation, text_store_path
from niks3d.nix.storepath import StorePath

DRV = (
    b'Derive([("out","/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x","","")],'
    b'[("/nix/store/0l4b3yvqz4wx1c7w0vk2s4a4p4bvp2pb-dep.drv",["out"])],'
    b'["/nix/store/2ncmgiqy9m7cwzmq4v6ni6pc2kf6pd03-builder.sh"],"x86_64-linux","/bin/sh",'
    b'["-c","echo \\"hi\\"\\n"],[("out","/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x")])'
)


def test_outputs_and_inputs_are_read_with_escapes() -> None:
    drv = parse_derivation(DRV)
    assert drv.outputs == {"out": "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x"}
    assert drv.references() == [
        "/nix/store/0l4b3yvqz4wx1c7w0vk2s4a4p4bvp2pb-dep.drv",
        "/nix/store/2ncmgiqy9m7cwzmq4v6ni6pc2kf6pd03-builder.sh",
    ]


@pytest.mark.parametrize(
    "bad",
    [b"", b"Derive(", DRV[:-1], DRV + b" ", DRV.replace(b"/nix/store/7h7", b"/tmp/x7h7"), b"Derive([],[],[],"],
)
def test_anything_else_is_refused(bad: bytes) -> None:
    with pytest.raises(InvalidDerivation):
        parse_derivation(bad)


@pytest.mark.nix
def test_the_text_path_of_real_derivations_is_their_store_path(nix_fixtures) -> None:
    for output in (nix_fixtures.with_log, nix_fixtures.prototest, nix_fixtures.graph.top):
        deriver = subprocess.run(["nix-store", "--query", "--deriver", output], capture_output=True, text=True)
        drv_path = StorePath.parse(deriver.stdout.strip())
        data = Path(drv_path.path).read_bytes()
        drv = parse_derivation(data)
        assert output in drv.outputs.values()
        assert text_store_path(drv_path.name, data, drv.references()) == drv_path
        tampered = data.replace(b"/bin/sh", b"/bin/bash")
        assert text_store_path(drv_path.name, tampered, drv.references()) != drv_path
