"""sha256 hashes in every textual form Nix accepts (docs/protocol.md 1.4)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix import nix32
from niks3d.nix.errors import InvalidHash
from niks3d.nix.hashes import format_sha256, parse_sha256, to_sri

DIGEST = bytes.fromhex("9e5b91a773d263d3a6fc4c98e172398b6bc162afce652085a7594b8e01dacb37")
NIX32 = "sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"
BASE64 = base64.b64encode(DIGEST).decode()


@pytest.mark.parametrize(
    "text",
    [
        NIX32,
        "sha256:" + DIGEST.hex(),
        "sha256:" + DIGEST.hex().upper(),
        "sha256:" + BASE64,
        "sha256-" + BASE64,
    ],
    ids=["nix32", "base16", "base16-upper", "base64", "sri"],
)
def test_every_form_nix_accepts_gives_the_same_digest(text):
    assert parse_sha256(text) == DIGEST


def test_format_is_what_nix_writes():
    assert format_sha256(DIGEST) == NIX32
    assert format_sha256(hashlib.sha256(b"").digest()) == (
        "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    )


def test_sri_is_base64_with_dash():
    assert to_sri(DIGEST) == "sha256-nluRp3PSY9Om/EyY4XI5i2vBYq/OZSCFp1lLjgHayzc="


@given(st.binary(min_size=32, max_size=32))
def test_format_and_sri_round_trip(digest):
    assert parse_sha256(format_sha256(digest)) == digest
    assert parse_sha256(to_sri(digest)) == digest


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("md5:" + "0" * 32, "algorithm 'md5' is not supported, only sha256"),
        ("sha512-" + BASE64, "algorithm 'sha512' is not supported, only sha256"),
        ("sha1:abc", "algorithm 'sha1' is not supported"),
        (NIX32[len("sha256:") :], "expected 'sha256:<hash>' or SRI 'sha256-<base64>'"),
        ("", "expected 'sha256:<hash>'"),
        ("SHA256:" + DIGEST.hex(), "algorithm 'SHA256' is not supported"),
        ("sha256:", "length 0 after 'sha256:' is none of 52 (nix32), 64 (base16) or 44 (base64)"),
        (NIX32 + "0", "length 53 after 'sha256:'"),
        ("sha256:e" + NIX32[8:], "character 'e' at index 0 is not nix32"),
        ("sha256:z" + NIX32[8:], "sets bits beyond 32 bytes"),
        ("sha256:" + "g" * 64, "64 characters but not base16"),
        ("sha256:" + BASE64[:-1] + "!", "not 44 characters of padded base64"),
        ("sha256:" + BASE64.replace("=", "A"), "not 44 characters of padded base64"),
        ("sha256-" + BASE64[:-1], "not 44 characters of padded base64"),
        ("sha256-" + BASE64[:-2] + "d=", "non-canonical base64"),
        (" " + NIX32, "expected 'sha256:<hash>'"),
        (NIX32 + "\n", "length 53"),
    ],
)
def test_malformed_hashes_are_refused_with_the_reason(text, reason):
    with pytest.raises(InvalidHash, match=re.escape(reason)) as info:
        parse_sha256(text)
    assert repr(text)[:60] in str(info.value) or len(text) > 60


def test_error_names_a_huge_input_only_in_part():
    with pytest.raises(InvalidHash) as info:
        parse_sha256("sha256:" + "0" * 100_000)
    assert len(str(info.value)) < 400
    assert "100007 chars" in str(info.value)


def test_non_strings_are_refused():
    with pytest.raises(InvalidHash, match="must be a string, got bytes"):
        parse_sha256(NIX32.encode())  # type: ignore[arg-type]


@pytest.mark.parametrize("digest", [b"", b"\0" * 31, b"\0" * 33, "x" * 32])
def test_rendering_refuses_digests_that_are_not_32_bytes(digest):
    with pytest.raises(InvalidHash, match="a sha256 digest is 32 bytes"):
        format_sha256(digest)
    with pytest.raises(InvalidHash, match="a sha256 digest is 32 bytes"):
        to_sri(digest)


def test_nix32_body_is_decoded_little_endian():
    # The last nix32 digit holds the lowest 5 bits of byte 0.
    assert parse_sha256("sha256:" + "0" * 51 + "1") == b"\x01" + b"\0" * 31
    assert nix32.encode(b"\x01" + b"\0" * 31) == "0" * 51 + "1"
