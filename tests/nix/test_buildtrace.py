"""Build-trace entries, the realisations of Nix 2.35+ (``build-trace-v2/<drv>/<output>.doi``, docs/protocol.md 4.4).

The layout, body and fingerprint were read in Nix's realisation.cc and binary-cache-store.cc; the implementation
was also checked once against the two signed vectors of Nix's own tests (the note of issue 17 says how).
"""

from __future__ import annotations

import json

import pytest

from niks3d.nix.buildtrace import BuildTraceEntry, parse_build_trace_entry
from niks3d.nix.errors import InvalidRealisation
from niks3d.nix.signing import PublicKey, SecretKey

DRV = "lvmwl5rasr8xhmlh3d1hwjzck3653mqh-proto-ca.drv"
OUT = "x64h0kmmmddwg1bmb10lzx39m89x09a0-proto-ca"
KEY = SecretKey.generate("cache.example.org-1")
OTHER = SecretKey.generate("cache.example.org-2")


def test_fingerprint_is_the_keyed_entry_without_signatures_compact_and_sorted():
    entry = BuildTraceEntry(DRV, "out", OUT)
    assert (
        entry.fingerprint()
        == ('{"key":{"drvPath":"' + DRV + '","outputName":"out"},"value":{"outPath":"' + OUT + '"}}').encode()
    )
    # Signatures never change what is signed.
    assert entry.signed([KEY]).fingerprint() == entry.fingerprint()


def test_signed_body_is_what_nix_writes_and_verifies_with_the_public_key():
    entry = BuildTraceEntry(DRV, "out", OUT).signed([KEY, OTHER])
    body = json.loads(entry.to_json())
    assert list(body) == ["outPath", "signatures"]
    assert body["outPath"] == OUT
    assert [s["keyName"] for s in body["signatures"]] == ["cache.example.org-1", "cache.example.org-2"]
    assert entry.to_json() == json.dumps(body, sort_keys=True, separators=(",", ":"))
    for sig, key in zip(entry.signatures, (KEY, OTHER), strict=True):
        assert key.public_key().verify(sig, entry.fingerprint())
    # Signed for another output or another derivation, the same signature is worthless.
    moved = BuildTraceEntry(DRV, "dev", OUT, entry.signatures)
    assert not KEY.public_key().verify(moved.signatures[0], moved.fingerprint())


def test_signing_again_replaces_the_signature_of_the_same_key_name():
    once = BuildTraceEntry(DRV, "out", OUT).signed([KEY])
    assert once.signed([KEY]).signatures == once.signatures
    assert len(once.signed([OTHER]).signatures) == 2


def test_body_round_trips_and_string_signatures_are_read_too():
    entry = BuildTraceEntry(DRV, "out", OUT).signed([KEY])
    assert parse_build_trace_entry(entry.to_json(), drv_path=DRV, output_name="out") == entry
    assert parse_build_trace_entry(entry.to_json().encode(), drv_path=DRV, output_name="out") == entry
    unstructured = json.dumps({"outPath": OUT, "signatures": list(entry.signatures)})
    assert parse_build_trace_entry(unstructured, drv_path=DRV, output_name="out") == entry
    bare = parse_build_trace_entry(json.dumps({"outPath": OUT}), drv_path=DRV, output_name="out")
    assert bare.signatures == ()
    assert bare.to_json() == '{"outPath":"' + OUT + '","signatures":[]}'


def test_public_key_from_text_verifies_what_was_signed():
    entry = BuildTraceEntry(DRV, "out", OUT).signed([KEY])
    public = PublicKey.parse(KEY.public_key().to_text())
    assert public.verify(entry.signatures[0], entry.fingerprint())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (b"\xff", "not UTF-8"),
        ('{"signatures":[]}', "has no 'outPath'"),
        ('{"outPath":"' + OUT + '","id":"x"}', "unexpected keys ['id']"),
        ('{"outPath":"' + OUT + '","outPath":"' + OUT + '"}', "the key 'outPath' twice"),
        ('{"outPath":"/nix/store/' + OUT + '"}', "build trace outPath"),
        ('{"outPath":42}', "outPath must be a string"),
        ('{"outPath":"' + OUT + '","signatures":{}}', "'signatures' must be a list"),
        ('{"outPath":"' + OUT + '","signatures":[42]}', "must be objects or strings"),
        ('{"outPath":"' + OUT + '","signatures":[{"keyName":"k"}]}', "signature object is"),
        ('{"outPath":"' + OUT + '","signatures":[{"keyName":"k","sig":"AAAA","x":1}]}', "signature object is"),
        ('{"outPath":"' + OUT + '","signatures":["k:AAAA"]}', "decodes to 3 bytes"),
        ('{"outPath":"' + OUT + '","signatures":[{"keyName":"k","sig":"%%%"}]}', "not valid base64"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_problem(body, problem):
    with pytest.raises(InvalidRealisation) as caught:
        parse_build_trace_entry(body, drv_path=DRV, output_name="out")
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("drv", "output", "problem"),
    [
        (OUT, "out", "is not a derivation (.drv)"),
        ("../" + DRV, "out", "build trace drvPath"),
        (DRV, "o!ut", "output name 'o!ut'"),
        (DRV, "", "output name ''"),
    ],
)
def test_the_key_parts_are_validated(drv, output, problem):
    with pytest.raises(InvalidRealisation) as caught:
        BuildTraceEntry(drv, output, OUT)
    assert problem in str(caught.value)
