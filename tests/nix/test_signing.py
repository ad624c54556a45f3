"""Ed25519 keys, signatures and fingerprints in Nix's formats (docs/protocol.md 3)."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix.errors import (
    InvalidHash,
    InvalidNarInfo,
    InvalidSignature,
    InvalidSigningKey,
    InvalidStorePath,
)
from niks3d.nix.hashes import parse_sha256
from niks3d.nix.signing import PublicKey, SecretKey, fingerprint, parse_signature

# Throwaway key pair from docs/protocol.md 3.3.
TEST_SECRET = "test-cache-1:PqggjRI4Ue4L9QFtQg+/rYIn5t2c/6jiUk2Q/I+mAHbhNpTF4pJOuaJN1Mck2jYg1kt/Z3hJlFyljAuoyAmKUg=="
TEST_PUBLIC = "test-cache-1:4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI="
NIXOS_PUBLIC = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

PROTOTEST = "/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"
PROTODEP = "/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
PROTOTEST_FP = (
    b"1;/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0;"
    b"sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy;2072;"
    b"/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0,/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
)
PROTODEP_FP = (
    b"1;/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep;"
    b"sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk;128;"
)
PROTOTEST_SIG = "test-cache-1:WcqKIPgPPFoXr0lj5N7IufhXVqPoeWlyy9+E+wZ+yBNFgB+GYrgORoR/dRVv882Yw9rBj5wxyAjFx8zLX9xQBA=="


@pytest.fixture
def secret() -> SecretKey:
    return SecretKey.parse(TEST_SECRET)


def test_prototest_fingerprint_is_exact():
    nar_hash = parse_sha256("sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy")
    refs = ["w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep", "b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"]
    assert fingerprint(PROTOTEST, nar_hash, 2072, refs) == PROTOTEST_FP


def test_fingerprint_without_references_ends_in_semicolon():
    nar_hash = parse_sha256("sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk")
    assert fingerprint(PROTODEP, nar_hash, 128, []) == PROTODEP_FP


def test_test_key_signs_prototest_exactly_as_nix_did(secret):
    assert secret.sign(PROTOTEST_FP) == PROTOTEST_SIG
    assert secret.public_key().verify(PROTOTEST_SIG, PROTOTEST_FP)


def test_test_key_signature_of_protodep_verifies(secret):
    sig = secret.sign(PROTODEP_FP)
    assert sig.startswith("test-cache-1:")
    assert PublicKey.parse(TEST_PUBLIC).verify(sig, PROTODEP_FP)
    assert not PublicKey.parse(TEST_PUBLIC).verify(sig, PROTOTEST_FP)


def test_fingerprint_rerenders_the_hash_as_nix32_and_accepts_any_reference_form():
    hex_hash = parse_sha256("sha256:9e5b91a773d263d3a6fc4c98e172398b6bc162afce652085a7594b8e01dacb37")
    refs = [PROTODEP, "b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0", PROTODEP]
    assert fingerprint(PROTOTEST, hex_hash, 2072, iter(refs)) == PROTOTEST_FP


@pytest.mark.parametrize(
    ("fp", "sig"),
    [
        (
            b"1;/nix/store/w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10;"
            b"sha256:1mi14cqk363wv368ffiiy01knardmnlyphi6h9xv6dkjz44hk30i;205968;"
            b"/nix/store/9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.31,/nix/store/w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10",
            "cache.nixos.org-1:uP5KU8MCmyRnKGlN5oEv6xWJBI5EO/Pf5aFztZuLSz8BpCcZ1fdBnJkVXhBAlxkdm/CemsgQskhwvyd2yghTAg==",
        ),
        (
            fingerprint(
                "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin",
                parse_sha256("sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"),
                196040,
                [
                    "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
                    "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
                    "j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
                    "yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
                ],
            ),
            "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==",
        ),
    ],
    ids=["hello-2.10", "curl-7.82.0-bin"],
)
def test_real_cache_nixos_org_signatures_verify(fp, sig):
    key = PublicKey.parse(NIXOS_PUBLIC)
    assert key.verify(sig, fp)
    assert not key.verify(sig, fp.replace(b";", b";x", 1))
    assert not PublicKey("cache.nixos.org-2", key.key).verify(sig, fp)  # renamed key: not valid


def test_secret_key_round_trips_in_nix_format(secret):
    assert secret.name == "test-cache-1"
    assert secret.to_text() == TEST_SECRET
    assert not secret.to_text().endswith("\n")
    assert secret.public_key() == PublicKey.parse(TEST_PUBLIC)
    assert secret.public_key().to_text() == TEST_PUBLIC


def test_secret_key_repr_does_not_show_the_secret(secret):
    assert "PqggjRI4" not in repr(secret)
    assert base64.b64decode(TEST_SECRET.split(":")[1]).hex()[:16] not in repr(secret)


@pytest.mark.parametrize("text", [TEST_SECRET + "\n", TEST_SECRET + "\n\n"])
def test_secret_key_tolerates_a_trailing_newline(text):
    assert SecretKey.parse(text).to_text() == TEST_SECRET


def _flip_public_byte(text: str) -> str:
    name, b64 = text.split(":", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[40] ^= 1
    return f"{name}:{base64.b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "there is no ':' between the key name and the base64 data"),
        (TEST_SECRET.replace(":", ""), "there is no ':' between the key name and the base64 data"),
        (TEST_SECRET[len("test-cache-1") :], "the key name before ':' is empty"),
        (TEST_SECRET + "\r\n", "it contains a carriage return"),
        ("a b" + TEST_SECRET[len("test-cache-1") :], "the key name 'a b' contains ' '"),
        (TEST_SECRET[:-2] + "!=", "the part after ':' is not valid base64"),
        (TEST_SECRET[:-1], "the part after ':' is not valid base64"),
        (TEST_SECRET + " ", "the part after ':' is not valid base64"),
        ("\n" + TEST_SECRET, "spans several lines"),
        (TEST_SECRET + "\n" + TEST_SECRET, "spans several lines"),
        (
            "k:" + base64.b64encode(b"\0" * 32).decode(),
            "secret key 'k' is not valid: it decodes to 32 bytes, expected 64",
        ),
        (_flip_public_byte(TEST_SECRET), "its public half does not match its seed"),
        (TEST_PUBLIC, "it decodes to 32 bytes, expected 64"),
    ],
)
def test_malformed_secret_keys_are_refused_without_leaking_them(text, reason):
    with pytest.raises(InvalidSigningKey, match=re.escape(reason)) as info:
        SecretKey.parse(text)
    assert "PqggjRI4Ue4L9QFtQg" not in str(info.value)


def test_secret_key_load_reads_files_and_names_them(tmp_path, secret):
    path = tmp_path / "sk"
    path.write_text(TEST_SECRET + "\n")
    assert SecretKey.load(path) == secret
    assert SecretKey.load(str(path)) == secret
    with pytest.raises(InvalidSigningKey, match=re.escape(f"cannot read secret key file {str(tmp_path / 'nope')!r}")):
        SecretKey.load(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_text("nocolon")
    with pytest.raises(InvalidSigningKey, match=re.escape(f"secret key file {str(bad)!r}: secret key is not valid")):
        SecretKey.load(bad)


def test_generated_keys_sign_and_verify():
    key = SecretKey.generate("cache.example.org-1")
    assert SecretKey.parse(key.to_text()) == key
    sig = key.sign(PROTOTEST_FP)
    assert parse_signature(sig)[0] == "cache.example.org-1"
    assert key.public_key().verify(sig, PROTOTEST_FP)
    assert not PublicKey.parse(TEST_PUBLIC.replace("test-cache-1", "cache.example.org-1")).verify(sig, PROTOTEST_FP)
    assert SecretKey.generate("k").secret != SecretKey.generate("k").secret


def test_secret_key_constructor_validates():
    with pytest.raises(InvalidSigningKey, match="expected 64 bytes"):
        SecretKey("k", b"\0" * 63)
    with pytest.raises(InvalidSigningKey, match="the key name before ':' is empty"):
        SecretKey("", b"\0" * 64)
    with pytest.raises(InvalidSigningKey, match="does not match its seed"):
        SecretKey("k", b"\0" * 64)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI=", "there is no ':'"),
        (":4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI=", "the key name before ':' is empty"),
        ("k:4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI", "not valid base64"),
        ("k:AAAA", "it decodes to 3 bytes, expected 32"),
        (TEST_SECRET, "it decodes to 64 bytes, expected 32"),
        (TEST_PUBLIC + "\r", "it contains a carriage return"),
    ],
)
def test_malformed_public_keys_are_refused(text, reason):
    with pytest.raises(InvalidSigningKey, match=re.escape(reason)):
        PublicKey.parse(text)


def test_public_key_tolerates_a_trailing_newline():
    assert PublicKey.parse(TEST_PUBLIC + "\n").to_text() == TEST_PUBLIC


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "there is no ':'"),
        ("nocolon", "there is no ':'"),
        (PROTOTEST_SIG.replace("test-cache-1", ""), "the key name before ':' is empty"),
        (PROTOTEST_SIG[:-2], "the part after ':' is not valid base64"),
        (PROTOTEST_SIG + "\n", "the part after ':' is not valid base64"),
        (PROTOTEST_SIG + "\r", "it contains a carriage return"),
        ("k:" + base64.b64encode(b"\0" * 63).decode(), "decodes to 63 bytes, an Ed25519 signature is 64"),
        ("k:" + base64.b64encode(b"\0" * 65).decode(), "decodes to 65 bytes"),
        ("k:", "decodes to 0 bytes"),
        ("k\0:AAAA", "it contains a NUL character"),
        ("a\tb:AAAA", "the key name 'a\\tb' contains '\\t'"),
    ],
)
def test_malformed_signatures_are_refused(line, reason):
    with pytest.raises(InvalidSignature, match=re.escape(reason)):
        parse_signature(line)
    with pytest.raises(InvalidSignature, match=re.escape(reason)):
        PublicKey.parse(TEST_PUBLIC).verify(line, PROTOTEST_FP)


def test_parse_signature_splits_at_the_first_colon():
    name, raw = parse_signature(PROTOTEST_SIG)
    assert name == "test-cache-1"
    assert len(raw) == 64


@pytest.mark.parametrize(
    ("args", "error", "reason"),
    [
        ((PROTOTEST, b"\0" * 32, 0, []), InvalidNarInfo, "NarSize must be a positive integer, got 0"),
        ((PROTOTEST, b"\0" * 32, -1, []), InvalidNarInfo, "NarSize must be a positive integer"),
        ((PROTOTEST, b"\0" * 32, True, []), InvalidNarInfo, "NarSize must be a positive integer"),
        ((PROTOTEST, b"\0" * 31, 1, []), InvalidHash, "must be a 32-byte sha256 digest"),
        ((PROTOTEST[1:], b"\0" * 32, 1, []), InvalidStorePath, "is not inside /nix/store"),
        ((PROTOTEST, b"\0" * 32, 1, ["x"]), InvalidStorePath, "reference: store path basename 'x'"),
        (
            (PROTOTEST, b"\0" * 32, 1, ["/nix/store/x"]),
            InvalidStorePath,
            "reference: store path '/nix/store/x'",
        ),
        ((PROTOTEST, b"\0" * 32, 1, PROTODEP), InvalidStorePath, "not one string"),
    ],
)
def test_fingerprint_refuses_invalid_input(args, error, reason):
    with pytest.raises(error, match=re.escape(reason)):
        fingerprint(*args)


@given(st.binary(min_size=1, max_size=200))
def test_signatures_verify_only_for_their_message(message):
    key = SecretKey.parse(TEST_SECRET)
    sig = key.sign(message)
    assert key.public_key().verify(sig, message)
    assert not key.public_key().verify(sig, message + b"\0")
