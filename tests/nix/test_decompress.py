"""Streaming decompression of NAR files: every compression Nix writes, in any chunking, with bounded output
pieces; truncated and corrupt streams refused."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os

import pytest
import zstandard

from niks3d.nix.decompress import StreamDecompressor, sniff_compression
from niks3d.nix.errors import InvalidNar
from niks3d.nix.nar import MAGIC

DATA = MAGIC + os.urandom(5000) + b"\0" * 3_000_000
COMPRESS = {
    # Two streams each, as parallel compressors write them (zstd: two frames).
    "xz": lambda d: lzma.compress(d[:1000]) + lzma.compress(d[1000:]),
    "bzip2": lambda d: bz2.compress(d[:1000]) + bz2.compress(d[1000:]),
    "gzip": lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]),
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d[:1000]) + zstandard.ZstdCompressor().compress(d[1000:]),
    "none": lambda d: d,
}


def _run(name: str, body: bytes, step: int, piece: int = 65536) -> tuple[bytes, int]:
    out: list[bytes] = []
    decoder = StreamDecompressor(name, out.append, piece=piece)
    for i in range(0, len(body), step):
        decoder.feed(body[i : i + step])
    decoder.finish()
    return b"".join(out), max(len(p) for p in out)


@pytest.mark.parametrize("name", sorted(COMPRESS))
@pytest.mark.parametrize("step", [1, 4093, 1 << 20])
def test_every_compression_round_trips_in_any_chunking(name, step):
    body = COMPRESS[name](DATA)
    # Byte by byte is too slow for the uncompressed body; odd steps still cut everywhere.
    body_step = 997 if step == 1 and len(body) > 200_000 else step
    got, largest = _run(name, body, body_step)
    assert got == DATA
    assert sniff_compression(body[:24]) == name
    if name != "none":
        assert largest <= 65536  # 3 MB of zeros never come out in one piece


@pytest.mark.parametrize("name", ["xz", "bzip2", "gzip"])
def test_a_truncated_stream_is_refused(name):
    body = COMPRESS[name](DATA)
    decoder = StreamDecompressor(name, lambda _: None)
    decoder.feed(body[: len(body) - 10])
    with pytest.raises(InvalidNar, match="truncated"):
        decoder.finish()


@pytest.mark.parametrize("name", ["xz", "bzip2", "gzip"])
def test_a_corrupt_stream_is_refused(name):
    # (zstd frames carry no checksum by default, so damage may decode to other bytes: the NAR validator and the
    # FileHash of the write path catch those, tests/e2e/test_nix_copy_attacks.py.)
    body = bytearray(COMPRESS[name](DATA))
    body[len(body) // 2 : len(body) // 2 + 64] = os.urandom(64)
    decoder = StreamDecompressor(name, lambda _: None)
    with pytest.raises(InvalidNar, match=r"corrupt|truncated"):
        decoder.feed(bytes(body))
        decoder.finish()


def test_unknown_compressions_are_refused():
    with pytest.raises(InvalidNar, match="not supported"):
        StreamDecompressor("br", lambda _: None)
    assert sniff_compression(b"not a known magic") is None
