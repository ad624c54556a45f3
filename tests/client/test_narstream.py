"""One pass over a real store path: NAR, check, zstd, FileHash; corrupt paths are refused (narstream.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard

from niks3d.client.narstream import NarMismatch, PushCancelled, stream_nar
from niks3d.client.spool import Spool
from niks3d.nix.hashes import format_sha256
from tests.client.storekit import build_fresh, corrupt, delete, path_info

pytestmark = pytest.mark.nix


def _dump(path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout


def _decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("threads", [0, 2], ids=["inline", "zstd-threads"])
@pytest.mark.parametrize("fixture", ["tricky", "odd_names", "large", "prototest"])
async def test_compressed_output_is_exactly_the_nar_nix_dumps(nix_fixtures, fixture, threads):
    path = getattr(nix_fixtures, fixture)
    info = await path_info(path)
    with Spool(memory_limit=1 << 20) as spool:
        seen: list[int] = []
        outcome = stream_nar(info, Path(path), spool.write, threads=threads, listing=True, progress=seen.append)
        data = spool.getvalue()
    assert _decompress(data) == _dump(path)
    assert outcome.file_size == len(data)
    assert outcome.file_hash == format_sha256(hashlib.sha256(data).digest())
    assert outcome.nar_size == info.nar_size == sum(seen)
    assert outcome.listing.startswith(b'{"version":1,"root":{')
    if fixture != "odd_names":  # odd names are not UTF-8, so that listing is not strict JSON (as with Nix)
        assert json.loads(outcome.listing)["version"] == 1


async def test_listing_only_pass_reads_and_checks_without_compressing(nix_fixtures):
    info = await path_info(nix_fixtures.prototest)
    outcome = stream_nar(info, Path(nix_fixtures.prototest), None, listing=True)
    assert outcome.file_size == 0
    assert outcome.listing.startswith(b'{"version":1,"root":{"type":"directory"')


@pytest.fixture
def fresh_path(tmp_path):
    created: list[str] = []

    def make(script: str) -> str:
        path = build_fresh(tmp_path, "narstream-test", script)
        created.append(path)
        return path

    yield make
    for path in created:
        delete(path)


@pytest.mark.parametrize("with_sink", [True, False], ids=["upload", "listing-only"])
async def test_a_file_changed_behind_nixs_back_is_refused_naming_the_path(fresh_path, with_sink):
    path = fresh_path("mkdir $out; echo original-content > $out/file")
    info = await path_info(path)
    corrupt(path, "file", b"tampered-content\n")  # same length: only the hash differs
    sink = Spool().write if with_sink else None
    with pytest.raises(NarMismatch, match=f"refusing to push {path}: its NAR hashes to sha256:") as caught:
        stream_nar(info, Path(path), sink, listing=True)
    assert caught.value.path == path
    assert format_sha256(info.nar_hash) in str(caught.value)


async def test_a_grown_path_is_refused_as_soon_as_it_passes_nar_size(fresh_path):
    path = fresh_path("mkdir $out; head -c 1048576 /dev/zero > $out/a")
    info = await path_info(path)
    corrupt(path, "a", bytes(8 << 20))
    seen: list[int] = []
    with pytest.raises(NarMismatch, match="larger than the NarSize"):
        stream_nar(info, Path(path), Spool().write, progress=seen.append)
    assert sum(seen) <= info.nar_size  # it stopped before compressing anything past NarSize


async def test_a_shrunk_path_is_refused(fresh_path):
    path = fresh_path("mkdir $out; echo twelve-bytes > $out/a")
    info = await path_info(path)
    corrupt(path, "a", b"x")
    with pytest.raises(NarMismatch, match=f"has {info.nar_size - 8} bytes, the store records NarSize {info.nar_size}"):
        stream_nar(info, Path(path), Spool().write)


async def test_a_set_cancel_event_stops_the_pass(nix_fixtures):
    info = await path_info(nix_fixtures.large)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PushCancelled):
        stream_nar(info, Path(nix_fixtures.large), Spool().write, cancel=cancel)
