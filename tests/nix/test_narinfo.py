"""narinfo parsing and rendering (docs/protocol.md 2) and narinfo signing (docs/protocol.md 3)."""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niks3d.nix.bucketkeys import COMPRESSION_EXTENSIONS
from niks3d.nix.errors import InvalidNarInfo, NixFormatError
from niks3d.nix.hashes import format_sha256, parse_sha256, to_sri
from niks3d.nix.narinfo import NarInfo, parse_narinfo, render_nix_cache_info
from niks3d.nix.signing import PublicKey, SecretKey
from niks3d.nix.storepath import StorePath

TEST_SECRET = "test-cache-1:PqggjRI4Ue4L9QFtQg+/rYIn5t2c/6jiUk2Q/I+mAHbhNpTF4pJOuaJN1Mck2jYg1kt/Z3hJlFyljAuoyAmKUg=="
NIXOS_PUBLIC = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

# The narinfos of docs/protocol.md 2.4, exactly as Nix wrote them.
PROTOTEST = """\
StorePath: /nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0
URL: nar/0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg.nar.xz
Compression: xz
FileHash: sha256:0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg
FileSize: 404
NarHash: sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy
NarSize: 2072
References: b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0 w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep
Deriver: lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv
Sig: test-cache-1:WcqKIPgPPFoXr0lj5N7IufhXVqPoeWlyy9+E+wZ+yBNFgB+GYrgORoR/dRVv882Yw9rBj5wxyAjFx8zLX9xQBA==
"""
PROTODEP = """\
StorePath: /nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep
URL: nar/0nr6zvgppj8fmsjkk4scg6bzxjxwm378qgzh65azsc6gfzm754zs.nar.zst
Compression: zstd
FileHash: sha256:0nr6zvgppj8fmsjkk4scg6bzxjxwm378qgzh65azsc6gfzm754zs
FileSize: 95
NarHash: sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk
NarSize: 128
References: \nDeriver: 21l8hb4afnp7q7y7l1klfm005kpi131l-protodep.drv
"""
HELLO_CA = """\
StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt
URL: nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar
Compression: none
FileHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
FileSize: 120
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: \nCA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
"""
CURL = """\
StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin
URL: nar/05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56.nar.xz
Compression: xz
FileHash: sha256:05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56
FileSize: 68852
NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0
NarSize: 196040
References: 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115 \
j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n
Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv
Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3\
HPVWRdD1hkeKZBQ==
"""


@pytest.mark.parametrize("text", [PROTOTEST, PROTODEP, HELLO_CA, CURL], ids=["prototest", "protodep", "ca", "curl"])
def test_real_narinfos_parse_and_render_byte_for_byte(text):
    info = parse_narinfo(text)
    assert info.render() == text
    assert parse_narinfo(text.encode()) == info


def test_parsed_fields():
    info = parse_narinfo(PROTOTEST, expected_hash="b3rplkk2fihip23mj9kdvzxdw7zwh64b")
    assert info.store_path == StorePath.parse("/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0")
    assert info.url == "nar/0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg.nar.xz"
    assert info.compression == "xz"
    assert info.file_hash == parse_sha256("sha256:0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg")
    assert info.file_size == 404
    assert info.nar_hash.hex() == "9e5b91a773d263d3a6fc4c98e172398b6bc162afce652085a7594b8e01dacb37"
    assert info.nar_size == 2072
    assert info.references == (
        "b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0",
        "w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep",
    )
    assert info.deriver == "lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv"
    assert info.system is None
    assert info.ca is None
    assert len(info.sigs) == 1
    assert parse_narinfo(HELLO_CA).ca == "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"


def test_signing_with_the_test_key_gives_exactly_nixs_sig():
    signed = parse_narinfo(PROTOTEST)
    unsigned = dataclasses.replace(signed, sigs=())
    key = SecretKey.parse(TEST_SECRET)
    assert unsigned.signed([key]) == signed
    assert unsigned.signed([key]).render() == PROTOTEST
    # The fingerprint leaves out URL, Compression and FileHash: the zstd copy has the identical Sig (2.4).
    zstd = dataclasses.replace(unsigned, url="nar/x.nar.zst", compression="zstd", file_size=431)
    assert zstd.signed([key]).sigs == signed.sigs


def test_unsigned_dependency_signed_verifies_with_the_public_key():
    info = parse_narinfo(PROTODEP).signed([SecretKey.parse(TEST_SECRET)])
    (sig,) = info.sigs
    public = SecretKey.parse(TEST_SECRET).public_key()
    assert public.verify(sig, info.fingerprint())
    assert info.fingerprint() == (
        b"1;/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep;"
        b"sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk;128;"
    )


def test_cache_nixos_org_narinfo_signature_verifies():
    info = parse_narinfo(CURL)
    assert PublicKey.parse(NIXOS_PUBLIC).verify(info.sigs[0], info.fingerprint())
    tampered = dataclasses.replace(info, nar_size=info.nar_size + 1)
    assert not PublicKey.parse(NIXOS_PUBLIC).verify(info.sigs[0], tampered.fingerprint())


def test_signed_replaces_only_signatures_by_the_same_key_name():
    info = parse_narinfo(CURL)
    other = SecretKey.generate("other-1")
    once = info.signed([SecretKey.parse(TEST_SECRET), other])
    twice = once.signed([other])
    assert len(once.sigs) == 3
    assert twice.sigs == once.sigs  # deterministic Ed25519: re-signing gives the same line
    renamed = SecretKey.generate("test-cache-1")
    replaced = once.signed([renamed])
    assert len(replaced.sigs) == 3
    assert renamed.sign(info.fingerprint()) in replaced.sigs
    assert list(replaced.sigs) == sorted(replaced.sigs)


def test_minimal_narinfo_defaults_compression_to_bzip2():
    text = (
        "StorePath: /nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep\n"
        "URL: nar/x.nar.bz2\n"
        "NarHash: sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk\n"
        "NarSize: 128\n"
    )
    info = parse_narinfo(text)
    assert info.compression == "bzip2"
    assert (info.file_hash, info.file_size, info.references, info.deriver, info.sigs) == (
        None,
        None,
        (),
        None,
        (),
    )
    assert info.render() == (
        "StorePath: /nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep\n"
        "URL: nar/x.nar.bz2\n"
        "Compression: bzip2\n"
        "NarHash: sha256:1y0q9wg872jhi9a58ygq1s8xnmm34ic5pvgygjwxayrza6pafvdk\n"
        "NarSize: 128\n"
        "References: \n"
    )
    assert parse_narinfo(text.replace("URL:", "Compression: \nURL:")).compression == "bzip2"


def test_hashes_in_base16_and_sri_are_rendered_as_nix32():
    digest = parse_sha256("sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy")
    text = PROTOTEST.replace(format_sha256(digest), "sha256:" + digest.hex())
    assert "0dybv80q" not in text
    assert parse_narinfo(text).render() == PROTOTEST
    assert parse_narinfo(PROTOTEST.replace(format_sha256(digest), to_sri(digest))).render() == PROTOTEST


def test_unknown_fields_are_ignored_and_unknown_deriver_means_none():
    text = PROTODEP.replace("Deriver: 21l8hb4afnp7q7y7l1klfm005kpi131l-protodep.drv", "Deriver: unknown-deriver")
    info = parse_narinfo(text + "X-Custom: anything at all\n")
    assert info.deriver is None
    assert "Deriver" not in info.render()


def test_system_is_kept_and_rendered_after_deriver():
    text = PROTOTEST.replace("Sig:", "System: x86_64-linux\nSig:")
    info = parse_narinfo(text)
    assert info.system == "x86_64-linux"
    assert info.render() == text


def test_references_and_sigs_are_sorted_and_unique():
    dep, own = "w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep", "b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"
    text = PROTOTEST.replace(f"References: {own} {dep}", f"References: {dep} {own} {dep}")
    sig = "Sig: test-cache-1:" + PROTOTEST.split("Sig: test-cache-1:")[1]
    text = text.replace("Sig:", "Sig: a-key:" + base64.b64encode(b"\1" * 64).decode() + "\n" + sig + "Sig:", 1)
    info = parse_narinfo(text)
    assert info.references == parse_narinfo(PROTOTEST).references
    assert info.sigs[0].startswith("a-key:") and len(info.sigs) == 2


def test_expected_hash_must_match_the_store_path():
    with pytest.raises(InvalidNarInfo, match=re.escape("narinfo line 1 (StorePath): the hash part")) as info:
        parse_narinfo(PROTOTEST, expected_hash="w253jl7q3l5ia8blv4z6y1mkji7hs53l")
    assert (info.value.line, info.value.field) == (1, "StorePath")


def _without(field: str, text: str = PROTOTEST) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(field + ":"))


_SIG_B64 = base64.b64encode(b"\0" * 64).decode()


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        ("", None, None, "narinfo: the narinfo is empty"),
        (PROTOTEST.replace("\n", "\r\n"), 1, "StorePath", "contains a carriage return"),
        (PROTOTEST[:-1], 10, "Sig", "the last line does not end in a newline"),
        (PROTOTEST + "\n", 11, None, "empty line"),
        (PROTOTEST.replace("URL: ", "URL:"), 2, "URL", "the ':' must be followed by a space"),
        (
            PROTOTEST.replace("References: ", "References:"),
            8,
            "References",
            "the ':' must be followed by a space",
        ),
        (PROTOTEST.replace("FileSize: 404", "FileSize 404"), 5, None, "no ':' separator"),
        (PROTOTEST + ": x\n", 11, None, "empty field name"),
        (_without("StorePath"), None, "StorePath", "narinfo field StorePath: the required field is missing"),
        (_without("URL"), None, "URL", "the required field is missing"),
        (_without("NarHash"), None, "NarHash", "the required field is missing"),
        (_without("NarSize"), None, "NarSize", "the required field is missing"),
        (PROTOTEST.replace("NarSize: 2072", "NarSize: 0"), 7, "NarSize", "NarSize must not be 0"),
        (PROTOTEST.replace("NarSize: 2072", "NarSize: -1"), 7, "NarSize", "is not a decimal size"),
        (PROTOTEST.replace("NarSize: 2072", "NarSize: 02072"), 7, "NarSize", "no leading zeros"),
        (PROTOTEST.replace("NarSize: 2072", "NarSize: 2072 "), 7, "NarSize", "is not a decimal size"),
        (
            PROTOTEST.replace("NarSize: 2072", "NarSize: 99999999999999999999"),
            7,
            "NarSize",
            "from 0 to 2^64-1",
        ),
        (PROTOTEST.replace("FileSize: 404", "FileSize: x"), 5, "FileSize", "is not a decimal size"),
        (
            PROTOTEST.replace("NarHash: sha256:0", "NarHash: sha256:e"),
            6,
            "NarHash",
            "character 'e' at index 0",
        ),
        (
            PROTOTEST.replace("NarHash: sha256:", "NarHash: md5:"),
            6,
            "NarHash",
            "algorithm 'md5' is not supported",
        ),
        (PROTOTEST.replace("FileHash: sha256:0ndn", "FileHash: sha256:ndn"), 4, "FileHash", "length 51"),
        (
            PROTOTEST.replace("nar/0ndnh4brx1jnjz8jingz6pfjc858m537zf9damy4dm1fvddclbjg.nar.xz", ""),
            2,
            "URL",
            "URL '' must be non-empty",
        ),
        (PROTOTEST.replace("URL: nar/0", "URL: nar/ 0"), 2, "URL", "without spaces"),
        (
            PROTOTEST.replace("Compression: xz", "Compression: rar"),
            3,
            "Compression",
            "unknown compression 'rar'",
        ),
        (PROTOTEST + "NarSize: 2072\n", 11, "NarSize", "given twice (first on line 7)"),
        (
            PROTOTEST + "StorePath: /nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep\n",
            11,
            "StorePath",
            "given twice",
        ),
        (PROTOTEST + "References: \n", 11, "References", "given twice (first on line 8)"),
        (HELLO_CA + HELLO_CA.splitlines(keepends=True)[-1], 10, "CA", "given twice (first on line 9)"),
        (PROTOTEST + "Deriver: unknown-deriver\n", 11, "Deriver", "given twice"),
        (PROTOTEST.replace("Sig: test-cache-1:", "Sig: test-cache-1"), 10, "Sig", "there is no ':'"),
        (PROTOTEST.replace("Sig: test-cache-1:", "Sig: :"), 10, "Sig", "the key name before ':' is empty"),
        (PROTOTEST.replace("BA==", "B!=="), 10, "Sig", "not valid base64"),
        (PROTOTEST.replace("xQBA==", "xQ=="), 10, "Sig", "decodes to 63 bytes"),
        (PROTOTEST + f"Sig: {_SIG_B64}\n", 11, "Sig", "there is no ':'"),
        (
            PROTOTEST.replace(" w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep", " ../../etc/passwd"),
            8,
            "References",
            "the basename contains '/'",
        ),
        (
            PROTOTEST.replace(" w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep", " w253jl7q3l5ia8blv4z6y1mkji7hs53l-.."),
            8,
            "References",
            "the name must not be '..'",
        ),
        (
            PROTOTEST.replace(
                " w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep",
                " /nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep",
            ),
            8,
            "References",
            "the basename contains '/'",
        ),
        (
            PROTOTEST.replace(
                " w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep", "  w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
            ),
            8,
            "References",
            "single spaces",
        ),
        (PROTOTEST.replace("protodep\nDeriver", "protodep \nDeriver"), 8, "References", "single spaces"),
        (PROTOTEST.replace("prototest-1.0.drv", "prototest-1.0"), 9, "Deriver", "is not a derivation"),
        (PROTOTEST.replace("Deriver: lvmwl5", "Deriver: /nix/store/lvmwl5"), 9, "Deriver", "contains '/'"),
        (
            PROTOTEST.replace("StorePath: /nix/store/", "StorePath: /gnu/store/"),
            1,
            "StorePath",
            "is not inside /nix/store",
        ),
        (
            PROTOTEST.replace(
                "StorePath: /nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0",
                "StorePath: /nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0/bin",
            ),
            1,
            "StorePath",
            "contains '/'",
        ),
        (HELLO_CA.replace("CA: fixed:r:sha256:", "CA: fixed:r:"), 9, "CA", "is not a content address"),
        (PROTOTEST.replace("Deriver:", "System: x86 64\nDeriver:"), 9, "System", "without spaces"),
        (PROTOTEST.replace("FileSize: 404", "FileSize: 4\x0004"), 5, "FileSize", "control character '\\x00'"),
        (PROTOTEST.replace("FileSize: 404", "FileSize: 4\t04"), 5, "FileSize", "control character '\\t'"),
    ],
)
def test_malformed_narinfos_are_refused_naming_line_and_field(text, line, field, reason):
    with pytest.raises(InvalidNarInfo, match=re.escape(reason)) as info:
        parse_narinfo(text)
    assert (info.value.line, info.value.field) == (line, field)
    if line is not None and field is not None:
        assert str(info.value).startswith(f"narinfo line {line} ({field}): ")


def test_non_utf8_bytes_are_refused():
    with pytest.raises(InvalidNarInfo, match="narinfo: not valid UTF-8 at byte 11"):
        parse_narinfo(b"StorePath: \xff\n")


def test_construction_validates_every_field():
    base = parse_narinfo(PROTOTEST)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"references": ("../x",)}, "References"),
        ({"references": "w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"}, "References"),
        ({"nar_size": 0}, "NarSize"),
        ({"nar_hash": b"\0"}, "NarHash"),
        ({"file_hash": b"\0" * 33}, "FileHash"),
        ({"file_size": -1}, "FileSize"),
        ({"url": "a\nb"}, "URL"),
        ({"compression": "rar"}, "Compression"),
        ({"deriver": "lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0"}, "Deriver"),
        ({"sigs": ("nocolon",)}, "Sig"),
        ({"ca": "sha256:abc"}, "CA"),
        ({"system": ""}, "System"),
        ({"store_path": "/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"}, "StorePath"),
    ]
    for change, field in cases:
        with pytest.raises(InvalidNarInfo) as info:
            dataclasses.replace(base, **change)
        assert info.value.field == field, change
        assert str(info.value).startswith(f"narinfo field {field}: ")


def test_construction_normalises_order():
    base = parse_narinfo(PROTOTEST)
    shuffled = dataclasses.replace(base, references=(*reversed(base.references), base.references[0]))
    assert shuffled == base
    assert isinstance(shuffled.references, tuple)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        parse_narinfo("x")
    assert issubclass(InvalidNarInfo, NixFormatError)


def test_nix_cache_info():
    assert render_nix_cache_info("/nix/store", True, 40) == "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    assert render_nix_cache_info("/nix/store", False, 30) == "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 30\n"
    for store_dir in ("nix/store", "/nix/store/", "/nix/../store", "/nix/store\nPriority: 1", ""):
        with pytest.raises(NixFormatError, match="must be a canonical absolute path"):
            render_nix_cache_info(store_dir, True, 40)
    with pytest.raises(NixFormatError, match="priority must be an integer"):
        render_nix_cache_info("/nix/store", True, "40")  # type: ignore[arg-type]


# --- property: parse(render(x)) == x ---------------------------------------------------------------------

_hash_parts = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)
_names = st.from_regex(r"[A-Za-z0-9+_?=][A-Za-z0-9+\-._?=]{0,40}", fullmatch=True)
_basenames = st.builds(lambda h, n: f"{h}-{n}", _hash_parts, _names)
_digests = st.binary(min_size=32, max_size=32)
_sizes = st.integers(min_value=1, max_value=2**64 - 1)
_sigs = st.builds(
    lambda name, raw: f"{name}:{base64.b64encode(raw).decode()}",
    st.from_regex(r"[a-z0-9.\-]{1,20}", fullmatch=True),
    st.binary(min_size=64, max_size=64),
)
_cas = st.builds(
    lambda kind, digest: f"{kind}:sha256:{format_sha256(digest)[7:]}",
    st.sampled_from(["fixed:r", "fixed", "text"]),
    _digests,
)


@st.composite
def narinfos(draw: st.DrawFn) -> NarInfo:
    return NarInfo(
        store_path=StorePath.from_basename(draw(_basenames)),
        url=draw(st.from_regex(r"nar/[a-z0-9]{1,52}\.nar(\.zst)?", fullmatch=True)),
        compression=draw(st.sampled_from(sorted(COMPRESSION_EXTENSIONS))),
        file_hash=draw(st.none() | _digests),
        file_size=draw(st.none() | st.integers(min_value=0, max_value=2**64 - 1)),
        nar_hash=draw(_digests),
        nar_size=draw(_sizes),
        references=tuple(draw(st.lists(_basenames, max_size=6))),
        deriver=draw(st.none() | _basenames.map(lambda b: b + ".drv")),
        system=draw(st.none() | st.sampled_from(["x86_64-linux", "aarch64-darwin"])),
        sigs=tuple(draw(st.lists(_sigs, max_size=3))),
        ca=draw(st.none() | _cas),
    )


@given(narinfos())
def test_parse_of_render_is_identity(info):
    text = info.render()
    assert text.endswith("\n") and "\r" not in text
    assert parse_narinfo(text, expected_hash=info.store_path.hash) == info
    assert parse_narinfo(text).render() == text


@given(narinfos())
def test_render_keeps_nix_field_order(info):
    keys = [line.split(":", 1)[0] for line in info.render().splitlines()]
    order = ["StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References",
             "Deriver", "System", "Sig", "CA"]  # fmt: skip
    assert keys == sorted(keys, key=order.index)
    assert keys.count("References") == 1
