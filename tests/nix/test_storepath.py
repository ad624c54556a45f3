"""Store paths validated with Nix HEAD's strictest rules (docs/protocol.md 7)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix.errors import InvalidStorePath
from niks3d.nix.storepath import (
    HASH_LEN,
    MAX_NAME_LEN,
    STORE_DIR,
    StorePath,
    validate_hash_part,
    validate_name,
)

HASH = "b3rplkk2fihip23mj9kdvzxdw7zwh64b"
NAME_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+-._?="
# docs/protocol.md 7's validators, with \Z so that a trailing newline cannot slip through, as the oracle.
SPEC_BASENAME_RE = re.compile(r"[0-9a-df-np-sv-z]{32}-(?!\.\.?(?:-|\Z))[0-9A-Za-z+\-._?=]{1,211}")


def test_constants():
    assert (STORE_DIR, HASH_LEN, MAX_NAME_LEN) == ("/nix/store", 32, 211)


def test_parse_full_path():
    path = StorePath.parse(f"/nix/store/{HASH}-prototest-1.0")
    assert path == StorePath(HASH, "prototest-1.0")
    assert path.basename == f"{HASH}-prototest-1.0"
    assert path.path == f"/nix/store/{HASH}-prototest-1.0"
    assert str(path) == path.path
    assert not path.is_derivation


def test_from_basename_and_derivations():
    drv = StorePath.from_basename("lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv")
    assert drv.is_derivation
    assert drv.hash == "lvmwl5rasr8xhmlh3d1hwjzck3653mqh"
    assert StorePath.parse(drv.path) == drv


def test_store_paths_are_hashable_values():
    assert len({StorePath(HASH, "a"), StorePath(HASH, "a"), StorePath(HASH, "b")}) == 2
    with pytest.raises(AttributeError):
        StorePath(HASH, "a").name = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    ["a", "+-._?=", ".a", "..a", "a..", ".config", "-", "a-.", "x" * MAX_NAME_LEN, "hello.txt", "A=B?c+d"],
)
def test_valid_names_are_accepted(name):
    assert StorePath.from_basename(f"{HASH}-{name}").name == name
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"/nix/store/{HASH}-", "the basename is too short"),
        (f"/nix/store/{HASH}-.", "the name must not be '.'"),
        (f"/nix/store/{HASH}-..", "the name must not be '..'"),
        (f"/nix/store/{HASH}-.-x", "the name must not start with '.-' or '..-'"),
        (f"/nix/store/{HASH}-..-x", "the name must not start with '.-' or '..-'"),
        (f"/nix/store/{HASH}_x", "the basename must have '-' at index 32, found '_'"),
        (f"/nix/store/{HASH[:-1]}-xy", "the basename must have '-' at index 32, found 'x'"),
        (f"/nix/store/{HASH[:-1]}e-x", "the hash part has 'e' at index 31, which is not a nix32 character"),
        (f"/nix/store/{HASH.upper()}-x", "the hash part has 'B' at index 0"),
        (f"/nix/store/{HASH}-a b", "the name contains ' '"),
        (f"/nix/store/{HASH}-a/b", "the basename contains '/'"),
        (f"/nix/store/{HASH}-a%2fb", "the name contains '%'"),
        (f"/nix/store/{HASH}-a:b", "the name contains ':'"),
        (f"/nix/store/{HASH}-\u00e9", "the name contains 'é'"),
        (f"/nix/store/{HASH}-" + "x" * 212, "the basename is 245 characters long, the limit is 244"),
        (f"/nix/store/{HASH}-a\0", "contains a NUL character"),
        (f"/nix/store/{HASH}-a\n", "contains a line break"),
        (f"/nix/store/{HASH}-a\r", "contains a line break"),
        (f"/nix/store//{HASH}-a", "the basename contains '/'"),
        (f"/nix/store/../{HASH}-a", "the basename contains '/'"),
        (f"/nix/store/{HASH}-a/", "the basename contains '/'"),
        (f"/gnu/store/{HASH}-a", "is not inside /nix/store"),
        (f"nix/store/{HASH}-a", "is not inside /nix/store"),
        (f"{HASH}-a", "is not inside /nix/store"),
        ("/nix/store", "is not inside /nix/store"),
        ("/nix/store/", "the basename is too short"),
        ("", "is not inside /nix/store"),
    ],
)
def test_invalid_store_paths_are_refused_with_the_reason(text, reason):
    with pytest.raises(InvalidStorePath, match=re.escape(reason)) as info:
        StorePath.parse(text)
    assert str(info.value).startswith("store path ")


@pytest.mark.parametrize(
    ("basename", "reason"),
    [
        (f"/nix/store/{HASH}-a", "the basename contains '/'"),
        (f"{HASH}-", "the basename is too short"),
        (f"{HASH}", "the basename is too short"),
        (f"{HASH}-..", "the name must not be '..'"),
        (f"{HASH}-x\n", "contains a line break"),
    ],
)
def test_invalid_basenames_are_refused_with_the_reason(basename, reason):
    with pytest.raises(InvalidStorePath, match=re.escape(reason)):
        StorePath.from_basename(basename)


@pytest.mark.parametrize("value", [None, 5, b"/nix/store/x", ["a"]])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidStorePath, match="must be a string"):
        StorePath.parse(value)
    with pytest.raises(InvalidStorePath, match="must be a string"):
        StorePath.from_basename(value)
    with pytest.raises(InvalidStorePath, match="must be a string"):
        validate_hash_part(value)


def test_constructor_validates_too():
    with pytest.raises(InvalidStorePath, match=re.escape("the name must not be '..'")):
        StorePath(HASH, "..")
    with pytest.raises(InvalidStorePath, match="the hash part has 31 characters"):
        StorePath(HASH[:-1], "x")


def test_validate_hash_part():
    assert validate_hash_part(HASH) == HASH
    with pytest.raises(InvalidStorePath, match="has 33 characters, expected 32"):
        validate_hash_part(HASH + "0")
    with pytest.raises(InvalidStorePath, match="'u' at index 0"):
        validate_hash_part("u" + HASH[1:])


def test_validate_name_names_the_thing():
    with pytest.raises(InvalidStorePath, match=r"output name 'o!ut': the name contains '!'"):
        validate_name("o!ut", "output name")


_names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=MAX_NAME_LEN)
_hashes = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)


@given(_hashes, _names)
def test_acceptance_matches_the_spec_regex_on_valid_charset(hash_part, name):
    basename = f"{hash_part}-{name}"
    expected = SPEC_BASENAME_RE.fullmatch(basename) is not None
    try:
        parsed = StorePath.from_basename(basename)
    except InvalidStorePath:
        assert not expected
    else:
        assert expected
        assert parsed.basename == basename
        assert StorePath.parse(parsed.path) == parsed


@given(st.text(alphabet=NAME_CHARS + "/\0\n\r %:é\\ eotuA", max_size=260))
def test_acceptance_matches_the_spec_regex_on_any_text(text):
    expected = SPEC_BASENAME_RE.fullmatch(text) is not None
    try:
        StorePath.from_basename(text)
    except InvalidStorePath:
        assert not expected
    else:
        assert expected
