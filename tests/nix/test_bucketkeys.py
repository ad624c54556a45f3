"""Bucket keys: every kind the cache stores is recognised, nothing unsafe or malformed passes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix.bucketkeys import (
    COMPRESSION_EXTENSIONS,
    BucketKey,
    build_trace_key,
    log_key,
    ls_key,
    nar_key,
    narinfo_key,
    parse_bucket_key,
    realisation_key,
)
from niks3d.nix.errors import (
    InvalidBucketKey,
    InvalidHash,
    InvalidRealisation,
    InvalidStorePath,
    NixFormatError,
)
from niks3d.nix.hashes import parse_sha256

HASH = "b3rplkk2fihip23mj9kdvzxdw7zwh64b"
DRV = "lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv"
FILE_HASH_XZ = "0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg"
REALISATION_ID = "sha256:cf6bb86c7c41d538bbf2fb364a2945ff148fe494d91d53acf6cda8d1287d0ad5!out"

# docs/protocol.md 7's key regexes (plus the two realisation layouts), as an oracle for the fuzz test.
_H = r"[0-9a-df-np-sv-z]{32}"
_N = r"(?!\.\.?(?:-|\Z))[0-9A-Za-z+\-._?=]{1,211}"
SPEC_KEY_RES = [
    re.compile(r"nix-cache-info"),
    re.compile(rf"{_H}\.narinfo"),
    re.compile(rf"{_H}\.ls"),
    re.compile(r"nar/[0-9a-df-np-sv-z]{52}\.nar(?:\.(?:xz|bz2|zst|lzip|lz4|br))?"),
    re.compile(rf"log/{_H}-(?=.*\.drv\Z){_N}"),
    re.compile(rf"realisations/sha256:[0-9a-f]{{64}}!{_N}\.doi"),
    re.compile(rf"build-trace-v2/{_H}-(?=.*\.drv/){_N}/{_N}\.doi"),
]


@pytest.mark.parametrize(
    ("key", "kind", "hash_part"),
    [
        ("nix-cache-info", "nix-cache-info", None),
        (f"{HASH}.narinfo", "narinfo", HASH),
        (f"{HASH}.ls", "ls", HASH),
        (f"nar/{FILE_HASH_XZ}.nar", "nar", None),
        *[(f"nar/{FILE_HASH_XZ}.nar{ext}", "nar", None) for ext in (".zst", ".xz", ".bz2", ".br", ".lz4", ".lzip")],
        (f"log/{DRV}", "log", "lvmwl5rasr8xhmlh3d1hwjzck3653mqh"),
        (f"log/{HASH}-odd?name=x+y.drv", "log", HASH),
        (f"realisations/{REALISATION_ID}.doi", "realisation", None),
        (f"build-trace-v2/{DRV}/out.doi", "realisation", "lvmwl5rasr8xhmlh3d1hwjzck3653mqh"),
        (f"build-trace-v2/{DRV}/dev.doi", "realisation", "lvmwl5rasr8xhmlh3d1hwjzck3653mqh"),
    ],
)
def test_every_kind_of_key_is_recognised(key, kind, hash_part):
    parsed = parse_bucket_key(key)
    assert parsed == BucketKey(kind, key, hash_part)
    assert str(parsed) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "is empty"),
        ("/x", "starts with '/'"),
        (f"/{HASH}.narinfo", "starts with '/'"),
        ("../x", "contains a '..' segment"),
        ("nar/../../etc", "contains a '..' segment"),
        ("nar/../../etc/passwd", "contains a '..' segment"),
        (f"log/../{HASH}.narinfo", "contains a '..' segment"),
        ("..", "contains a '..' segment"),
        (".", "contains a '.' segment"),
        (f"./{HASH}.narinfo", "contains a '.' segment"),
        ("%2e%2e", "contains '%'"),
        ("%2e%2e/x", "contains '%'"),
        (f"nar%2f{FILE_HASH_XZ}.nar", "contains '%'"),
        (f"log/{HASH}-a%3f.drv", "contains '%'"),
        ("a\0b", "contains a NUL character"),
        (f"{HASH}.narinfo\0", "contains a NUL character"),
        (f"{HASH}.narinfo\n", "contains the control character '\\n'"),
        ("nar/\x01", "contains the control character '\\x01'"),
        ("nar/\x7f", "contains the control character '\\x7f'"),
        ("nar/\u00e9", "contains non-ASCII characters"),
        ("nar\\..\\x", "contains a backslash"),
        (f"{HASH}.narinfo\\", "contains a backslash"),
        ("x" * 513, "is 513 characters long, the limit is 512"),
        ("nar//x", "contains an empty segment"),
        (f"log/{DRV}/", "contains an empty segment"),
        ("nar/", "contains an empty segment"),
        (f"{HASH}.narinfo.xz", "a key without '/' must be 'nix-cache-info', '<hash>.narinfo' or '<hash>.ls'"),
        ("nix-cache-info.bak", "a key without '/' must be"),
        ("index.html", "a key without '/' must be"),
        (f"{HASH[:-1]}.narinfo", "the hash part has 31 characters, expected 32"),
        (f"{HASH[:-1]}e.narinfo", "the hash part has 'e' at index 31"),
        (f"{HASH.upper()}.ls", "the hash part has 'B' at index 0"),
        ("nar/abc.nar", "a NAR key needs a 52-character nix32 file hash, found 3 characters"),
        (f"nar/{FILE_HASH_XZ[:-1]}e.nar", "the NAR file hash contains 'e'"),
        (f"nar/{FILE_HASH_XZ}.nar.gz", "not '.nar.gz'"),
        (f"nar/{FILE_HASH_XZ}.narinfo", "not '.narinfo'"),
        (f"nar/{FILE_HASH_XZ}", "not ''"),
        (f"nar/x/{FILE_HASH_XZ}.nar", "a NAR key has no further '/' after 'nar/'"),
        (f"log/{HASH}-prototest-1.0", "is not a derivation"),
        (f"log/{HASH}-..", "the name must not be '..'"),
        (f"log/{HASH}", "the basename is too short"),
        ("log/x.drv", "the basename is too short"),
        (f"log/{DRV}/x", "the basename contains '/'"),
        (f"realisations/{REALISATION_ID}", "a realisation key is 'realisations/sha256:<hex64>!<output>.doi'"),
        (
            f"realisations/{REALISATION_ID.upper()}.doi",
            "is not 'sha256:<64 lowercase hex digits>!<output name>'",
        ),
        ("realisations/sha256:abc!out.doi", "is not 'sha256:<64 lowercase hex digits>!<output name>'"),
        (f"realisations/{REALISATION_ID[:-4]}!.doi", "output name '': the name is empty"),
        (f"realisations/{REALISATION_ID[:-4]}!..-x.doi", "the name must not start with '.-' or '..-'"),
        (f"realisations/{REALISATION_ID}!x.doi", "the name contains '!'"),
        (f"realisations/x/{REALISATION_ID}.doi", "a realisation key is"),
        (f"build-trace-v2/{DRV}/out", "a build trace key is 'build-trace-v2/<drv basename>/<output>.doi'"),
        (f"build-trace-v2/{DRV}", "a build trace key is"),
        (f"build-trace-v2/{DRV}/a/out.doi", "a build trace key is"),
        (f"build-trace-v2/{HASH}-x/out.doi", "is not a derivation"),
        (f"build-trace-v2/{DRV}/o!ut.doi", "output name 'o!ut': the name contains '!'"),
        (f"build-trace-v2/{DRV}/.doi", "output name '': the name is empty"),
        ("debuginfo/abc.debug", "the prefix 'debuginfo' is unknown"),
        ("etc/passwd", "the prefix 'etc' is unknown"),
    ],
)
def test_malformed_keys_are_refused_with_the_reason(key, reason):
    with pytest.raises(InvalidBucketKey, match=re.escape(reason)) as info:
        parse_bucket_key(key)
    assert str(info.value).startswith("bucket key ")


@pytest.mark.parametrize("value", [None, b"nix-cache-info", 3])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidBucketKey, match="must be a string"):
        parse_bucket_key(value)


def test_bucket_key_construction_checks_consistency():
    with pytest.raises(InvalidBucketKey, match="is of kind 'narinfo'"):
        BucketKey("ls", f"{HASH}.narinfo", HASH)
    with pytest.raises(InvalidBucketKey, match="with hash part"):
        BucketKey("narinfo", f"{HASH}.narinfo", None)
    with pytest.raises(InvalidBucketKey, match=re.escape("contains a '..' segment")):
        BucketKey("nar", "nar/../../etc", None)


def test_constructors_build_the_keys_nix_uses():
    assert narinfo_key(HASH) == f"{HASH}.narinfo"
    assert ls_key(HASH) == f"{HASH}.ls"
    assert log_key(DRV) == f"log/{DRV}"
    assert realisation_key(REALISATION_ID) == f"realisations/{REALISATION_ID}.doi"
    assert build_trace_key(DRV, "out") == f"build-trace-v2/{DRV}/out.doi"
    # The prototest NAR, xz-compressed by nix copy (docs/protocol.md 2.4): the key is the nix32 of the file hash.
    assert nar_key(parse_sha256(f"sha256:{FILE_HASH_XZ}"), "xz") == f"nar/{FILE_HASH_XZ}.nar.xz"


@pytest.mark.parametrize(
    ("compression", "suffix"),
    [
        ("zstd", ".nar.zst"),
        ("xz", ".nar.xz"),
        ("bzip2", ".nar.bz2"),
        ("br", ".nar.br"),
        ("lz4", ".nar.lz4"),
        ("lzip", ".nar.lzip"),
        ("none", ".nar"),
        ("gzip", ".nar"),
    ],
)
def test_nar_key_extension_per_compression(compression, suffix):
    digest = bytes(range(32))
    key = nar_key(digest, compression)
    assert key.endswith(suffix)
    assert key.count(".") == suffix.count(".")
    assert parse_bucket_key(key).kind == "nar"


def test_nar_key_defaults_to_zstd():
    assert nar_key(b"\0" * 32) == "nar/" + "0" * 52 + ".nar.zst"
    assert set(COMPRESSION_EXTENSIONS) == {"none", "gzip", "xz", "bzip2", "zstd", "lzip", "lz4", "br"}


@pytest.mark.parametrize(
    ("call", "error", "reason"),
    [
        (lambda: narinfo_key("../../etc/passwd"), InvalidStorePath, "the hash part has 16 characters"),
        (lambda: narinfo_key(HASH + "/"), InvalidStorePath, "has 33 characters"),
        (lambda: ls_key(""), InvalidStorePath, "has 0 characters"),
        (lambda: nar_key(b"\0" * 31), InvalidHash, "a NAR key needs a 32-byte sha256 digest"),
        (lambda: nar_key("x" * 32), InvalidHash, "a NAR key needs a 32-byte sha256 digest"),  # type: ignore[arg-type]
        (lambda: nar_key(b"\0" * 32, "gz"), InvalidBucketKey, "unknown compression 'gz'"),
        (lambda: nar_key(b"\0" * 32, "../x"), InvalidBucketKey, "unknown compression '../x'"),
        (lambda: log_key(f"{HASH}-x"), InvalidStorePath, "is not a derivation"),
        (lambda: log_key(f"../{DRV}"), InvalidStorePath, "contains '/'"),
        (lambda: log_key(f"/nix/store/{DRV}"), InvalidStorePath, "contains '/'"),
        (lambda: realisation_key("sha256:abc!out"), InvalidRealisation, "is not 'sha256:<64"),
        (lambda: realisation_key(REALISATION_ID + "/../x"), InvalidRealisation, "the name contains '/'"),
        (lambda: build_trace_key(DRV, ".."), InvalidStorePath, "the name must not be '..'"),
        (lambda: build_trace_key(f"{HASH}-x", "out"), InvalidStorePath, "is not a derivation"),
    ],
)
def test_constructors_refuse_invalid_parts(call, error, reason):
    with pytest.raises(error, match=re.escape(reason)):
        call()


_hashes = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)
_names = st.from_regex(r"[a-z0-9][a-z0-9+\-._?=]{0,19}", fullmatch=True)
_valid_keys = st.one_of(
    st.just("nix-cache-info"),
    _hashes.map(lambda h: f"{h}.narinfo"),
    _hashes.map(lambda h: f"{h}.ls"),
    st.builds(lambda h, e: f"nar/{h}{h[:20]}.nar{e}", _hashes, st.sampled_from(["", ".zst", ".xz", ".lzip"])),
    st.builds(lambda h, n: f"log/{h}-{n}.drv", _hashes, _names),
    st.builds(lambda n: f"realisations/sha256:{'ab' * 32}!{n}.doi", _names),
    st.builds(lambda h, n, o: f"build-trace-v2/{h}-{n}.drv/{o}.doi", _hashes, _names, _names),
)
_tokens = st.sampled_from(["/", ".", "..", "../", "%2e", "\\", "\0", "\n", "-", "!", ":", "x", "e", "A", ".drv", ""])


@st.composite
def _mutated_keys(draw):
    key = draw(_valid_keys)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        start = draw(st.integers(min_value=0, max_value=len(key)))
        end = draw(st.integers(min_value=start, max_value=min(len(key), start + 3)))
        key = key[:start] + draw(_tokens) + key[end:]
    return key


@given(_mutated_keys())
def test_every_accepted_key_matches_a_spec_shape_and_is_safe(key):
    try:
        parsed = parse_bucket_key(key)
    except InvalidBucketKey:
        assert not any(regex.fullmatch(key) for regex in SPEC_KEY_RES), key
        return
    assert any(regex.fullmatch(key) for regex in SPEC_KEY_RES), key
    segments = key.split("/")
    assert not key.startswith("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert "%" not in key and "\\" not in key and key.isprintable()
    assert parsed.key == key


@given(_valid_keys)
def test_generated_valid_keys_are_accepted(key):
    assert parse_bucket_key(key).key == key


def test_every_error_is_a_nix_format_error():
    with pytest.raises(NixFormatError):
        parse_bucket_key("../x")
    with pytest.raises(ValueError):
        parse_bucket_key("../x")
