"""What a pushed path's .drv proves (uploads/drvproof.py), on the real CA derivations of tests/nix/test_drvhash.py."""

from __future__ import annotations

from niks3d.nix.storepath import StorePath
from niks3d.uploads.drvproof import prove_derivation
from tests.nix.test_drvhash import IDS, ORIGINAL, ORIGINAL_PATH, RESOLVED, RESOLVED_PATH

OUT = StorePath.parse("/nix/store/qpb2zcwsz8pr50pbf3yqjc5ahky00jb0-modern-catop")
RESOLVED_DRV = StorePath.parse(RESOLVED_PATH)
TRACE = f"build-trace-v2/{RESOLVED_DRV.basename}/out.doi"
OTHER = "sha256:" + "0" * 64 + "!out"


def test_a_realisation_with_the_derivations_id_binds_its_log() -> None:
    proof = prove_derivation(OUT, RESOLVED_DRV, RESOLVED, (IDS[ORIGINAL_PATH], IDS[RESOLVED_PATH]), (), log=True)
    assert proof.log_refused is None and proof.log_binding == TRACE
    assert proof.deriver_ids == (IDS[RESOLVED_PATH],)  # the original's id is not the deriver's


def test_a_build_trace_entry_for_the_derivation_binds_its_log() -> None:
    proof = prove_derivation(OUT, RESOLVED_DRV, RESOLVED, (), ((RESOLVED_DRV.basename, "out"),), log=True)
    assert proof.log_refused is None and proof.log_binding == TRACE and proof.deriver_ids == ()


def test_a_realisation_for_another_id_proves_nothing() -> None:
    proof = prove_derivation(OUT, RESOLVED_DRV, RESOLVED, (OTHER,), ((RESOLVED_DRV.basename, "dev"),), log=True)
    assert proof.log_binding is None and proof.deriver_ids == ()
    assert proof.log_refused is not None and "content-addressed" in proof.log_refused


def test_another_derivations_file_proves_nothing() -> None:
    proof = prove_derivation(OUT, RESOLVED_DRV, ORIGINAL, (IDS[RESOLVED_PATH],), (), log=True)
    assert proof.log_refused is not None and "hash to" in proof.log_refused and proof.deriver_ids == ()


def test_an_unresolved_deriver_names_the_input_it_needs() -> None:
    original = StorePath.parse(ORIGINAL_PATH)
    proof = prove_derivation(OUT, original, ORIGINAL, (IDS[ORIGINAL_PATH],), (), log=True)
    assert proof.log_refused is not None and "needs the input derivation" in proof.log_refused


def test_without_a_log_the_realisations_are_still_sorted_out() -> None:
    proof = prove_derivation(OUT, RESOLVED_DRV, RESOLVED, (IDS[RESOLVED_PATH], OTHER), (), log=False)
    assert proof == type(proof)(deriver_ids=(IDS[RESOLVED_PATH],))
