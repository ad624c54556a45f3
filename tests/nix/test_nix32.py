"""nix32: Nix's base-32 encoding of hashes (docs/protocol.md 1.5)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix import nix32
from niks3d.nix.errors import InvalidNix32

PROTOTEST_HEX = "9e5b91a773d263d3a6fc4c98e172398b6bc162afce652085a7594b8e01dacb37"
PROTOTEST_NIX32 = "0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"


def reference_encode(data: bytes) -> str:
    """Nix's own encoder loop (base-nix-32.cc), transcribed byte-wise, as an independent oracle."""
    size = len(data)
    length = (size * 8 - 1) // 5 + 1 if size else 0
    out = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = b // 8, b % 8
        c = (data[i] >> j) | ((data[i + 1] << (8 - j)) if i + 1 < size else 0)
        out.append(nix32.ALPHABET[c & 0x1F])
    return "".join(out)


def test_alphabet_omits_e_o_t_u():
    assert nix32.ALPHABET == "0123456789abcdfghijklmnpqrsvwxyz"
    assert len(set(nix32.ALPHABET)) == 32
    assert not set("eotu") & set(nix32.ALPHABET)


def test_sha256_of_empty_string_matches_nix():
    assert nix32.encode(hashlib.sha256(b"").digest()) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


def test_prototest_nar_hash_matches_nix():
    assert nix32.encode(bytes.fromhex(PROTOTEST_HEX)) == PROTOTEST_NIX32
    assert nix32.decode(PROTOTEST_NIX32, 32).hex() == PROTOTEST_HEX


@pytest.mark.parametrize(("nbytes", "length"), [(0, 0), (1, 2), (16, 26), (20, 32), (32, 52), (64, 103)])
def test_encoded_length_follows_nix_formula(nbytes, length):
    assert nix32.encoded_length(nbytes) == length


@given(st.binary(max_size=80))
def test_encode_matches_nix_encoder_loop(data):
    assert nix32.encode(data) == reference_encode(data)


@given(st.binary(max_size=80))
def test_decode_inverts_encode(data):
    text = nix32.encode(data)
    assert len(text) == nix32.encoded_length(len(data))
    assert nix32.decode(text, len(data)) == data


_NOT_NIX32 = st.characters(codec="utf-8").filter(lambda ch: ch not in nix32.ALPHABET)


@given(st.binary(min_size=20, max_size=32), _NOT_NIX32, st.integers(min_value=0))
def test_decode_rejects_every_character_outside_the_alphabet(data, bad, where):
    text = nix32.encode(data)
    position = where % len(text)
    broken = text[:position] + bad + text[position + 1 :]
    with pytest.raises(InvalidNix32, match=f"at index {position} is not nix32"):
        nix32.decode(broken, len(data))


@pytest.mark.parametrize("bad", ["e", "o", "t", "u", "A", "Z", "-", " ", "\0", "é"])
def test_decode_names_the_bad_character(bad):
    text = "0" * 51 + bad
    with pytest.raises(InvalidNix32, match=re.escape(f"character {bad!r} at index 51 is not nix32")):
        nix32.decode(text, 32)


@given(st.sampled_from([1, 2, 3, 4, 16, 20, 32, 64]), st.data())
def test_decode_rejects_stray_high_bits(nbytes, data):
    length = nix32.encoded_length(nbytes)
    spare = length * 5 - nbytes * 8
    if spare == 0:  # 20-byte store hashes use every bit: nothing to reject
        assert nix32.decode(nix32.ALPHABET[31] * length, nbytes) == b"\xff" * nbytes
        return
    # The first digit holds the top 5 bits; any value with a bit above the byte length must be refused.
    first = data.draw(st.integers(min_value=1 << (5 - spare), max_value=31))
    rest = data.draw(st.text(alphabet=nix32.ALPHABET, min_size=length - 1, max_size=length - 1))
    with pytest.raises(InvalidNix32, match=f"sets bits beyond {nbytes} bytes"):
        nix32.decode(nix32.ALPHABET[first] + rest, nbytes)
    highest_valid = nix32.ALPHABET[(1 << (5 - spare)) - 1] + rest
    assert nix32.encode(nix32.decode(highest_valid, nbytes)) == highest_valid


@pytest.mark.parametrize("text", ["", "0" * 51, "0" * 53, PROTOTEST_NIX32[:-1]])
def test_decode_rejects_wrong_length(text):
    with pytest.raises(InvalidNix32, match=f"length {len(text)}, expected 52 for 32 bytes"):
        nix32.decode(text, 32)


def test_decode_rejects_non_strings():
    with pytest.raises(InvalidNix32, match="must be a string, got bytes"):
        nix32.decode(PROTOTEST_NIX32.encode(), 32)  # type: ignore[arg-type]


def test_encoded_length_rejects_negative():
    with pytest.raises(ValueError, match="must not be negative"):
        nix32.encoded_length(-1)
