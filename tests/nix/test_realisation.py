"""CA-derivation realisations (``.doi`` files, docs/protocol.md 4.4)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from niks3d.nix.errors import InvalidRealisation
from niks3d.nix.realisation import Realisation, parse_realisation, parse_realisation_id
from niks3d.nix.signing import SecretKey

DRV_HASH = "cf6bb86c7c41d538bbf2fb364a2945ff148fe494d91d53acf6cda8d1287d0ad5"
ID = f"sha256:{DRV_HASH}!out"
OUT = "x64h0kmmmddwg1bmb10lzx39m89x09a0-proto-ca"
# Observed from Nix 2.8 (docs/protocol.md 4.4).
BODY = (
    '{"dependentRealisations":{},"id":"sha256:cf6bb86c7c41d538bbf2fb364a2945ff148fe494d91d53acf6cda8d1287d0ad5!out",'
    '"outPath":"x64h0kmmmddwg1bmb10lzx39m89x09a0-proto-ca","signatures":[]}'
)
DEP_ID = "sha256:" + "ab" * 32 + "!dev"
DEP_OUT = "w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
TEST_SECRET = "test-cache-1:PqggjRI4Ue4L9QFtQg+/rYIn5t2c/6jiUk2Q/I+mAHbhNpTF4pJOuaJN1Mck2jYg1kt/Z3hJlFyljAuoyAmKUg=="


def test_nix_written_body_parses_and_renders_byte_for_byte():
    realisation = parse_realisation(BODY, expected_id=ID)
    assert realisation == Realisation(id=ID, out_path=OUT)
    assert (realisation.drv_hash, realisation.output_name) == (DRV_HASH, "out")
    assert realisation.to_json() == BODY
    assert parse_realisation(BODY.encode()) == realisation


def test_fingerprint_is_the_json_without_signatures():
    realisation = parse_realisation(BODY)
    assert realisation.fingerprint() == BODY.replace(',"signatures":[]', "").encode()


def test_signed_realisation_verifies_and_round_trips():
    key = SecretKey.parse(TEST_SECRET)
    signed = parse_realisation(BODY).signed([key])
    (sig,) = signed.signatures
    assert key.public_key().verify(sig, signed.fingerprint())
    assert signed.fingerprint() == parse_realisation(BODY).fingerprint()
    assert parse_realisation(signed.to_json()) == signed
    assert json.loads(signed.to_json())["signatures"] == [sig]
    other = SecretKey.generate("other")
    twice = signed.signed([other]).signed([key])
    assert len(twice.signatures) == 2 and sig in twice.signatures
    assert list(twice.signatures) == sorted(twice.signatures)


def test_dependent_realisations_round_trip_sorted():
    second = "sha256:" + "01" * 32 + "!out"
    realisation = Realisation(ID, OUT, dependent_realisations=((DEP_ID, DEP_OUT), (second, DEP_OUT)))
    assert realisation.dependent_realisations == ((second, DEP_OUT), (DEP_ID, DEP_OUT))
    body = realisation.to_json()
    assert body.startswith('{"dependentRealisations":{"sha256:0101')
    assert parse_realisation(body) == realisation
    assert b"dependentRealisations" in realisation.fingerprint()


@pytest.mark.parametrize("output", ["out", "dev", "lib32", "doc-x", "a.b", "+?="])
def test_realisation_ids_with_valid_output_names(output):
    assert parse_realisation_id(f"sha256:{DRV_HASH}!{output}") == (DRV_HASH, output)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is not 'sha256:<64 lowercase hex digits>!<output name>'"),
        (f"sha256:{DRV_HASH}", "is not 'sha256:<64"),
        (f"sha256:{DRV_HASH.upper()}!out", "is not 'sha256:<64"),
        (f"sha256:{DRV_HASH[:-1]}!out", "is not 'sha256:<64"),
        (f"sha512:{DRV_HASH}!out", "is not 'sha256:<64"),
        (f"{DRV_HASH}!out", "is not 'sha256:<64"),
        (f"sha256:{DRV_HASH}!", "output name '': the name is empty"),
        (f"sha256:{DRV_HASH}!..", "the name must not be '..'"),
        (f"sha256:{DRV_HASH}!a/b", "the name contains '/'"),
        (f"sha256:{DRV_HASH}!out!x", "the name contains '!'"),
        (f"sha256:{DRV_HASH}!out\n", "contains a line break"),
        (f"sha256:{DRV_HASH}!" + "o" * 212, "the limit is 211"),
    ],
)
def test_malformed_realisation_ids_are_refused(text, reason):
    with pytest.raises(InvalidRealisation, match=re.escape(reason)):
        parse_realisation_id(text)


def _body(**changes: object) -> str:
    body: dict[str, object] = json.loads(BODY)
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "realisation is not valid JSON"),
        ("{", "realisation is not valid JSON"),
        ("[]", "realisation must be a JSON object, got list"),
        (_body(id=None), "realisation has no 'id'"),
        (_body(outPath=None), "realisation has no 'outPath'"),
        (_body(extra=1), "realisation has unexpected keys ['extra']"),
        (BODY[:-1] + ',"id":"x"}', "realisation JSON has the key 'id' twice"),
        (_body(id=5), "realisation id must be a string, got int"),
        (_body(id="sha256:abc!out"), "is not 'sha256:<64"),
        (_body(outPath="/nix/store/" + OUT), "realisation outPath: store path basename"),
        (_body(outPath=OUT[:32] + "-.."), "the name must not be '..'"),
        (_body(outPath=7), "realisation outPath must be a string, got int"),
        (_body(signatures="k:sig"), "realisation 'signatures' must be a list"),
        (_body(signatures=["nocolon"]), "realisation signatures: signature 'nocolon' is malformed"),
        (
            _body(signatures=[{"keyName": "k", "sig": "x"}]),
            "realisation signatures must be strings, got dict",
        ),
        (_body(dependentRealisations=[]), "realisation 'dependentRealisations' must be an object"),
        (
            _body(dependentRealisations={"bad": DEP_OUT}),
            "realisation dependentRealisations: realisation id 'bad'",
        ),
        (_body(dependentRealisations={DEP_ID: "bad"}), "realisation dependentRealisations['sha256:abab"),
        (_body(dependentRealisations={DEP_ID: 1}), "must be a string, got int"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(text, reason):
    with pytest.raises(InvalidRealisation, match=re.escape(reason)):
        parse_realisation(text)


def test_expected_id_must_match():
    with pytest.raises(InvalidRealisation, match="does not match its key's id"):
        parse_realisation(BODY, expected_id=DEP_ID)


def test_non_utf8_is_refused():
    with pytest.raises(InvalidRealisation, match="realisation is not UTF-8"):
        parse_realisation(b"\xff")


def test_construction_validates():
    with pytest.raises(InvalidRealisation, match="is not 'sha256:<64"):
        Realisation("x", OUT)
    with pytest.raises(InvalidRealisation, match="given twice with different paths"):
        Realisation(ID, OUT, dependent_realisations=((DEP_ID, DEP_OUT), (DEP_ID, OUT)))
    realisation = Realisation(ID, OUT)
    with pytest.raises(InvalidRealisation, match="malformed"):
        dataclasses.replace(realisation, signatures=("x",))
