"""Parsing ``nix path-info --json`` in every shape Nix has printed it (closure.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest

from niks3d.client.closure import json_format_args, parse_path_info_json, path_info_argv
from niks3d.client.store import LocalStore
from niks3d.errors import ClientError
from niks3d.nix import nix32
from niks3d.nix.storepath import StorePath

TOP = "/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0"
DEP = "/nix/store/w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep"
DRV = "/nix/store/lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv"
DIGEST = bytes.fromhex("9e5b91a773d263d3a6fc4c98e172398b6bc162afce652085a7594b8e01dacb37")
SRI = "sha256-" + base64.b64encode(DIGEST).decode()
NIX32 = "sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"
DEP_DIGEST = bytes(range(32))


def _entry(path: str, nar_hash: object, **extra: object) -> dict[str, object]:
    return {"path": path, "narHash": nar_hash, "narSize": 2072, "references": [], **extra}


# Nix 2.8 / Lix: an array; 2.19+: an object keyed by path.
ARRAY_28 = [
    {
        "path": TOP,
        "narHash": SRI,
        "narSize": 2072,
        "references": [TOP, DEP],
        "deriver": DRV,
        "registrationTime": 1,
        "ultimate": True,
    },
    {"path": DEP, "narHash": "sha256:" + DEP_DIGEST.hex(), "narSize": 128, "references": []},
]
KEYED_219 = {
    TOP: {
        "narHash": NIX32,
        "narSize": 2072,
        "references": [DEP, TOP],
        "deriver": DRV,
        "ca": None,
        "signatures": [],
    },
    DEP: {"narHash": "sha256-" + base64.b64encode(DEP_DIGEST).decode(), "narSize": 128, "references": []},
}
# A newer experimental shape: basenames, structured hashes and content addresses.
KEYED_STRUCTURED = {
    TOP: {
        "version": 2,
        "storeDir": "/nix/store",
        "path": TOP.removeprefix("/nix/store/"),
        "narHash": {"algorithm": "sha256", "format": "base16", "hash": DIGEST.hex()},
        "narSize": 2072,
        "references": [DEP.removeprefix("/nix/store/"), TOP.removeprefix("/nix/store/")],
        "deriver": DRV.removeprefix("/nix/store/"),
        "ca": None,
    },
    DEP: {
        "narHash": {"algorithm": "sha256", "format": "nix32", "hash": nix32.encode(DEP_DIGEST)},
        "narSize": 128,
        "references": [],
        "ca": {
            "method": "nar",
            "hash": {
                "algorithm": "sha256",
                "format": "base64",
                "hash": base64.b64encode(DEP_DIGEST).decode(),
            },
        },
    },
}


@pytest.mark.parametrize("doc", [ARRAY_28, KEYED_219, KEYED_STRUCTURED], ids=["array-2.8", "keyed-2.19", "structured"])
def test_every_shape_gives_the_same_closure(doc):
    infos = parse_path_info_json(json.dumps(doc))
    top, dep = StorePath.parse(TOP), StorePath.parse(DEP)
    assert set(infos) == {top, dep}
    assert infos[top].nar_hash == DIGEST
    assert infos[top].nar_size == 2072
    assert infos[top].references == (top, dep)  # sorted by basename, full StorePath objects
    assert infos[top].deriver == StorePath.parse(DRV)
    assert infos[dep].nar_hash == DEP_DIGEST
    assert infos[dep].deriver is None


def test_structured_content_address_is_rendered_as_nix_writes_it():
    infos = parse_path_info_json(KEYED_STRUCTURED)
    assert infos[StorePath.parse(DEP)].ca == "fixed:r:sha256:" + nix32.encode(DEP_DIGEST)


def test_string_content_address_passes_through():
    doc = [_entry(DEP, SRI, ca="fixed:r:sha256:" + nix32.encode(DEP_DIGEST))]
    assert parse_path_info_json(doc)[StorePath.parse(DEP)].ca == "fixed:r:sha256:" + nix32.encode(DEP_DIGEST)


def test_invalid_path_in_keyed_output_is_named():
    with pytest.raises(ClientError, match="protodep is not valid"):
        parse_path_info_json({TOP: KEYED_219[TOP], DEP: None})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry(TOP, "md5-AAAAAAAAAAAAAAAAAAAAAA=="), "not supported"),
        (_entry(TOP, "sha256:xyz"), "narHash"),
        ({**_entry(TOP, SRI), "narSize": -1}, "narSize"),
        ({**_entry(TOP, SRI), "narSize": True}, "narSize"),
        (_entry("/nix/store/short-name", SRI), r"\[0\]\.path"),
        ({**_entry(TOP, SRI), "references": ["/tmp/x"]}, r"references\[0\]"),
        ({**_entry(TOP, SRI), "storeDir": "/gnu/store"}, "store directory"),
    ],
    ids=["other-algo", "bad-hash", "negative-size", "bool-size", "bad-path", "bad-ref", "other-store"],
)
def test_bad_entries_are_refused_naming_the_field(entry, message):
    with pytest.raises(ClientError, match=message):
        parse_path_info_json([entry])


def test_keyed_entry_about_another_path_is_refused():
    with pytest.raises(ClientError, match="not"):
        parse_path_info_json({TOP: {**KEYED_219[DEP], "path": DEP}})


def test_output_that_is_not_json_is_refused():
    with pytest.raises(ClientError, match="did not print JSON"):
        parse_path_info_json("error: something")


def test_argv_asks_for_the_recursive_json_closure_of_a_chroot_store(tmp_path):
    (tmp_path / "nix/store").mkdir(parents=True)
    argv = path_info_argv([StorePath.parse(TOP)], LocalStore.chroot(tmp_path))
    assert argv[:3] == ["nix", "--extra-experimental-features", "nix-command"]
    assert argv[argv.index("--store") + 1] == str(tmp_path)
    assert {"--json", "--recursive"} <= set(argv)
    assert argv[-2:] == ["--", TOP]


@pytest.mark.nix
def test_real_nix_output_matches_nix_store_queries(nix_fixtures):
    out = subprocess.run(
        path_info_argv([StorePath.parse(nix_fixtures.prototest)], LocalStore.system()),
        check=True,
        capture_output=True,
    ).stdout
    infos = parse_path_info_json(out)
    assert {p.path for p in infos} == {nix_fixtures.prototest, nix_fixtures.protodep}
    for path, info in infos.items():
        want_hash = subprocess.run(
            ["nix-store", "--query", "--hash", path.path], check=True, capture_output=True, text=True
        ).stdout.strip()
        want_refs = subprocess.run(
            ["nix-store", "--query", "--references", path.path], check=True, capture_output=True, text=True
        ).stdout.split()
        assert "sha256:" + nix32.encode(info.nar_hash) == want_hash
        assert sorted(r.path for r in info.references) == sorted(want_refs)


@pytest.mark.parametrize(
    ("version", "args"),
    [
        ("nix (Nix) 2.8.0\n", []),
        ("nix (Nix) 2.26.3\n", []),
        ("nix (Nix) 2.34.8\n", ["--json-format", "2"]),
        ("nix (Nix) 2.35.0pre20260101_abc\n", ["--json-format", "2"]),
        ("nix (Nix) 3.0.0\n", ["--json-format", "2"]),
        ("nix (Lix, like Nix) 2.93.0\n", []),
        ("", []),
    ],
)
def test_json_format_is_asked_for_from_nix_2_34_on(version, args):
    assert json_format_args(version) == args


def test_the_modern_nix_prints_path_info_json_the_client_parses_without_a_warning(modern_nix, tmp_path):
    """With the chroot's Nix (2.26 in CI, the newest with NIKS3_MODERN_NIX_SUITE=sid): the flags the client
    picks from ``nix --version`` give no deprecation warning, and the shape parses, structured hashes and all."""
    (tmp_path / "f").write_text("flat content\n")
    flat = modern_nix.nix("store", "add-file", str(tmp_path / "f")).strip()
    args = json_format_args(modern_nix.run(["nix", "--version"]).stdout.decode())
    assert (args != []) == (modern_nix.version >= (2, 34))
    argv = path_info_argv([StorePath.parse(flat)], LocalStore.system(), args)
    proc = modern_nix.run(argv)
    assert b"deprecated" not in proc.stderr, proc.stderr.decode()
    (info,) = parse_path_info_json(proc.stdout).values()
    assert info.path == StorePath.parse(flat)
    assert info.ca is not None and info.ca.startswith("fixed:sha256:")
    dumped = modern_nix.run(["nix-store", "--dump", flat]).stdout
    assert info.nar_size == len(dumped)
    assert info.nar_hash == hashlib.sha256(dumped).digest()
