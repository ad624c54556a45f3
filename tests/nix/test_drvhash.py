"""The hash modulo of real derivations equals the realisation ids Nix gave their outputs.

The three .drv files below are what Nix 2.26.3 (Debian 13) and 2.34.8 (Debian unstable) wrote for
tests/e2e/test_modern_nix.py's CA_EXPR with the salt "probe1", and the ids are those of the Realisations table
of both stores after the build: ``modern-catop`` was built through its resolved derivation (no input derivations;
the deriver of its output), and Nix recorded a realisation for the original one (the ``modern-cadep`` input
hashed in) and one for the resolved one.
"""

from __future__ import annotations

import pytest

from niks3d.nix.derivation import InvalidDerivation, parse_derivation
from niks3d.nix.drvhash import realisation_ids, verified_hashes

CADEP_PATH = "/nix/store/sj3biq54dh5ibr3fnrl05d7zdbbqyj86-modern-cadep.drv"
CADEP = (
    b'Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",["-c","echo ca dependency $salt > $'
    b'out"],[("builder","/bin/sh"),("name","modern-cadep"),("out","/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6'
    b'xs1hycac8kf2n9"),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("salt","probe1"),("syst'
    b'em","x86_64-linux")])'
)
ORIGINAL_PATH = "/nix/store/v7aqm3f76dzm1nl2hrdcbc4bzmjvx1dv-modern-catop.drv"
ORIGINAL = (
    b'Derive([("out","","r:sha256","")],[("/nix/store/sj3biq54dh5ibr3fnrl05d7zdbbqyj86-modern-cadep.drv",['
    b'"out"])],[],"x86_64-linux","/bin/sh",["-c","echo /0l83wyik8s48rc3kxv7pvin9h9x60h49scknkw8ahna8281bf1'
    b'ki $salt > $out"],[("builder","/bin/sh"),("name","modern-catop"),("out","/1rz4g4znpzjwh1xymhjpm42vip'
    b'w92pr73vdgl6xs1hycac8kf2n9"),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("salt","pro'
    b'be1"),("system","x86_64-linux")])'
)
RESOLVED_PATH = "/nix/store/j2ifmqqcqwxp94dx6x765lgqn0z745wp-modern-catop.drv"
RESOLVED = (
    b'Derive([("out","","r:sha256","")],[],["/nix/store/gnvh28hs8pwwagbywpl3crb7jjhflddd-modern-cadep"],"x'
    b'86_64-linux","/bin/sh",["-c","echo /nix/store/gnvh28hs8pwwagbywpl3crb7jjhflddd-modern-cadep $salt > '
    b'$out"],[("builder","/bin/sh"),("name","modern-catop"),("out","/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl'
    b'6xs1hycac8kf2n9"),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("salt","probe1"),("sys'
    b'tem","x86_64-linux")])'
)
IDS = {
    CADEP_PATH: "sha256:658a894f441fd354cacbac6e6ef97ee057c7dccb6bd7d6f9ee65ee7365dd609e!out",
    ORIGINAL_PATH: "sha256:57359e80e6e35d72e78003b23ce85fa65b2d6f9efd547cedf98707c7cc856e2f!out",
    RESOLVED_PATH: "sha256:41371b4eca49ab75b1aa0cc6f4601f43e441972d03e3dd79357413395a49bef4!out",
}
FILES = {CADEP_PATH: CADEP, ORIGINAL_PATH: ORIGINAL, RESOLVED_PATH: RESOLVED}


def test_each_realisation_id_is_the_hash_modulo_of_its_derivation() -> None:
    inputs = verified_hashes(FILES)
    assert {p: realisation_ids(parse_derivation(c), inputs) for p, c in FILES.items()} == {
        p: {"out": i} for p, i in IDS.items()
    }


def test_a_derivation_without_inputs_needs_nothing_else() -> None:
    assert realisation_ids(parse_derivation(RESOLVED), {}) == {"out": IDS[RESOLVED_PATH]}


def test_an_input_derivation_is_needed_and_checked() -> None:
    with pytest.raises(InvalidDerivation, match="needs the input derivation"):
        realisation_ids(parse_derivation(ORIGINAL), {})
    with pytest.raises(InvalidDerivation, match="needs the input derivation"):
        verified_hashes({ORIGINAL_PATH: ORIGINAL})
    forged = CADEP.replace(b"ca dependency", b"ca dependencz")
    with pytest.raises(InvalidDerivation, match="hash to"):
        verified_hashes({ORIGINAL_PATH: ORIGINAL, CADEP_PATH: forged})


def test_a_changed_byte_changes_the_id() -> None:
    changed = RESOLVED.replace(b"probe1", b"probe2")
    assert realisation_ids(parse_derivation(changed), {}) != {"out": IDS[RESOLVED_PATH]}
