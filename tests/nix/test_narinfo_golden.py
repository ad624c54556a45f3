"""Golden tests against the real Nix 2.8 client: our narinfos, signatures and keys are those Nix uses.

(1) A ``file://`` cache laid out as docs/protocol.md 4.7, with NARs from ``nix-store --dump`` and narinfos rendered
and signed by us, is read by ``nix path-info`` and passes ``nix store verify`` with our key, not with another.
(2) A key made by ``nix key generate-secret`` loads, and the narinfos ``nix copy`` writes with it parse,
re-render byte for byte, and carry exactly the signatures we compute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zstandard

from niks3d.nix.bucketkeys import nar_key, narinfo_key
from niks3d.nix.hashes import to_sri
from niks3d.nix.narinfo import NarInfo, parse_narinfo, render_nix_cache_info
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import STORE_DIR, StorePath
from testkit.nixfixtures import PROTOTEST_EXPR, add_to_store, build_expr
from tests.fixtures.nix import require_nix

pytestmark = pytest.mark.nix

NIX = ["nix", "--extra-experimental-features", "nix-command", "--option", "substituters", ""]


@dataclass(frozen=True)
class Built:
    prototest: str
    protodep: str
    ca_path: str


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require_nix(request.config)
    workdir = tmp_path_factory.mktemp("golden")
    (prototest,) = build_expr(PROTOTEST_EXPR, workdir)
    protodep = next(p for p in _run(["nix-store", "-q", "--references", prototest]).split() if p.endswith("-protodep"))
    hello = workdir / "hello.txt"
    hello.write_text("hello\n")
    return Built(prototest, protodep, add_to_store(hello))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh XDG_CACHE_HOME, so that no narinfo or nix-cache-info answer is cached between runs."""
    cache = tmp_path / "xdg-cache"
    cache.mkdir()
    return {**os.environ, "XDG_CACHE_HOME": str(cache)}


def _run(argv: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, input=stdin, timeout=300, check=False)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _returncode(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    return proc.returncode, proc.stderr


def _local_narinfo(path: str) -> tuple[NarInfo, bytes]:
    """Our own narinfo for a local store path (URL and file fields placeholder), plus its NAR bytes."""
    nar = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True, timeout=300).stdout
    (local,) = json.loads(_run([*NIX, "path-info", "--json", path]))
    deriver = _run(["nix-store", "-q", "--deriver", path]).strip()
    info = NarInfo(
        store_path=StorePath.parse(path),
        url="placeholder",
        compression="none",
        file_hash=None,
        file_size=None,
        nar_hash=hashlib.sha256(nar).digest(),
        nar_size=len(nar),
        references=tuple(StorePath.parse(r).basename for r in _run(["nix-store", "-q", "--references", path]).split()),
        deriver=None if deriver == "unknown-deriver" else StorePath.parse(deriver).basename,
        ca=local.get("ca"),
    )
    # Our hashing of nix-store --dump agrees with the store's own record.
    assert to_sri(info.nar_hash) == local["narHash"]
    assert info.nar_size == local["narSize"]
    return info, nar


def _write_cache(directory: Path, paths: list[str], key: SecretKey, compression: str) -> dict[str, NarInfo]:
    (directory / "nar").mkdir(parents=True)
    (directory / "nix-cache-info").write_text(render_nix_cache_info(STORE_DIR, True, 40))
    written = {}
    for path in paths:
        info, nar = _local_narinfo(path)
        data = zstandard.ZstdCompressor().compress(nar) if compression == "zstd" else nar
        file_hash = hashlib.sha256(data).digest()
        url = nar_key(file_hash, compression)
        info = replace(info, url=url, compression=compression, file_hash=file_hash, file_size=len(data))
        info = info.signed([key])
        (directory / url).write_bytes(data)
        (directory / narinfo_key(info.store_path.hash)).write_text(info.render())
        written[path] = info
    return written


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_nix_reads_and_verifies_a_cache_we_wrote(built, env, tmp_path, compression):
    key = SecretKey.generate("niks3d-golden-1")
    cache = tmp_path / "cache"
    written = _write_cache(cache, [built.prototest, built.protodep, built.ca_path], key, compression)
    store = f"file://{cache}"

    listed = json.loads(_run([*NIX, "path-info", "--store", store, "--json", *written], env=env))
    by_path = {entry["path"]: entry for entry in listed}
    assert set(by_path) == set(written)
    for path, info in written.items():
        entry = by_path[path]
        assert entry["narHash"] == to_sri(info.nar_hash)
        assert entry["narSize"] == info.nar_size
        assert entry["references"] == [f"{STORE_DIR}/{r}" for r in info.references]
        assert entry["signatures"] == list(info.sigs)
        assert entry.get("ca") == info.ca
        assert entry.get("url") == info.url
        assert info.file_hash is not None
        assert entry.get("downloadHash", to_sri(info.file_hash)) == to_sri(info.file_hash)

    trusted = ["--option", "trusted-public-keys", key.public_key().to_text()]
    _run([*NIX, "store", "verify", "--store", store, *trusted, "-r", built.prototest, built.ca_path], env=env)

    other = SecretKey.generate("niks3d-golden-1")  # same name, other key: the signature must not verify
    untrusted = ["--option", "trusted-public-keys", other.public_key().to_text()]
    code, stderr = _returncode([*NIX, "store", "verify", "--store", store, *untrusted, built.prototest], env)
    assert code == 2, stderr  # 2: untrusted (docs/protocol.md 5.5)
    # A content-addressed path needs no signature: its CA line proves it (docs/protocol.md 3.4).
    _run([*NIX, "store", "verify", "--store", store, *untrusted, built.ca_path], env=env)


def test_nix_rejects_a_narinfo_changed_after_signing(built, env, tmp_path):
    key = SecretKey.generate("niks3d-golden-1")
    cache = tmp_path / "cache"
    written = _write_cache(cache, [built.protodep], key, "none")
    info = written[built.protodep]
    forged = replace(info, references=(StorePath.parse(built.prototest).basename,))  # Sig kept, fingerprint changed
    (cache / narinfo_key(info.store_path.hash)).write_text(forged.render())
    trusted = ["--option", "trusted-public-keys", key.public_key().to_text()]
    code, stderr = _returncode([*NIX, "store", "verify", "--store", f"file://{cache}", *trusted, built.protodep], env)
    assert code != 0, stderr


def test_nix_generated_key_signs_exactly_like_us(built, env, tmp_path):
    text = _run([*NIX, "key", "generate-secret", "--key-name", "k1"], env=env)
    assert not text.endswith("\n")
    key = SecretKey.parse(text)
    assert key.name == "k1"
    assert key.to_text() == text
    key_file = tmp_path / "k1.secret"
    key_file.write_text(text)
    assert _run([*NIX, "key", "convert-secret-to-public"], env=env, stdin=text) == key.public_key().to_text()

    target = tmp_path / "copied"
    url = f"file://{target}?secret-key={key_file}&compression=zstd"
    _run([*NIX, "copy", "--to", url, built.prototest, built.ca_path], env=env)

    for path in (built.prototest, built.protodep, built.ca_path):
        hash_part = StorePath.parse(path).hash
        nix_text = (target / narinfo_key(hash_part)).read_text()
        theirs = parse_narinfo(nix_text, expected_hash=hash_part)
        assert theirs.render() == nix_text  # byte for byte what Nix writes
        ours, nar = _local_narinfo(path)
        ours = replace(
            ours,
            url=theirs.url,
            compression=theirs.compression,
            file_hash=theirs.file_hash,
            file_size=theirs.file_size,
        ).signed([key])
        assert ours == theirs
        assert (target / theirs.url).exists()
        assert theirs.url == nar_key(theirs.file_hash or b"", "zstd")
        assert hashlib.sha256((target / theirs.url).read_bytes()).digest() == theirs.file_hash
        assert zstandard.ZstdDecompressor().decompressobj().decompress((target / theirs.url).read_bytes()) == nar
