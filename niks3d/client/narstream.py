"""One pass over a store path: serialise it as a NAR, check it, compress it with zstd, hash what comes out.

:func:`stream_nar` runs in a worker thread (zstandard and hashlib release the GIL, so several of them use
several cores). It reads the path with :class:`niks3d.nix.nar_dump.NarDumper`, counts and hashes the NAR, feeds
it to a zstd compressor (multi-threaded for big NARs) and hands every compressed piece to ``sink`` together
with its SHA-256 (the object's ``FileHash``). The NAR must have the NarHash and NarSize the store claims:
a NAR that grows past NarSize is refused at once, and a different hash or a short NAR is refused at the end,
in both cases with :class:`NarMismatch` naming the path. The caller must then neither report nor publish
what it has uploaded so far.
"""

from __future__ import annotations

__all__ = ["NarMismatch", "NarOutcome", "PushCancelled", "stream_nar", "zstd_threads_for"]

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from niks3d.client.closure import PathInfo
from niks3d.errors import ClientError
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import render_listing
from niks3d.nix.nar_dump import NarDumper

MULTITHREAD_FROM = 8 << 20  # NARs at least this big are compressed by zstd's own worker threads
# zstd's default job size at level 3 (8 MiB) costs ~130 MiB of buffers with two workers and was no faster
# on the NARs measured; 2 MiB jobs cost ~25 MiB at the same ratio.
ZSTD_JOB_SIZE = 2 << 20


class NarMismatch(ClientError):
    """The NAR read from the store is not the one the store's database describes (a corrupt store path)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"refusing to push {path}: {reason}; the store path is corrupt "
            f"(try 'nix-store --verify-path {path}' and 'nix-store --repair-path {path}')"
        )


class PushCancelled(ClientError):
    """The push was stopped (another upload failed) while this NAR was being produced."""


@dataclass(frozen=True)
class NarOutcome:
    """The result of one pass: NAR size, compressed size and hash, and the rendered ``.ls`` if asked for."""

    nar_size: int
    file_size: int
    file_hash: str
    listing: bytes | None


def zstd_threads_for(nar_size: int, cpus: int | None = None) -> int:
    """zstd worker threads for a NAR of ``nar_size`` bytes: all cores for big NARs, none for small."""
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return count if nar_size >= MULTITHREAD_FROM and count > 1 else 0


def _compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    if threads <= 0:
        return zstandard.ZstdCompressor(level=level)
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=ZSTD_JOB_SIZE)
    return zstandard.ZstdCompressor(compression_params=params)


def stream_nar(
    info: PathInfo,
    real_path: Path,
    sink: Callable[[bytes], None] | None,
    *,
    level: int = 3,
    threads: int = 0,
    listing: bool = False,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> NarOutcome:
    """Produce the compressed NAR of ``info.path`` (read from ``real_path``) into ``sink``, checking it.

    With ``sink=None`` the NAR is only read and checked (to render the listing). Raises :class:`NarMismatch`
    for a NAR that differs from NarHash/NarSize, :class:`ClientError` when the path cannot be read, and
    :class:`PushCancelled` when ``cancel`` is set.
    """
    expected_size = info.nar_size
    compressor = _compressor(level, threads).compressobj() if sink else None
    file_sha = hashlib.sha256()
    file_size = 0
    seen = 0

    def emit(data: bytes) -> None:
        nonlocal file_size
        if data and sink is not None:
            file_sha.update(data)
            file_size += len(data)
            sink(data)

    dumper = NarDumper(real_path, listing=listing)
    try:
        for chunk in dumper:
            if cancel is not None and cancel.is_set():
                raise PushCancelled(f"stopped while reading {info.path}")
            seen += len(chunk)
            if seen > expected_size:
                raise NarMismatch(
                    str(info.path), f"its NAR is larger than the NarSize {expected_size} the store records"
                )
            if compressor is not None:
                emit(compressor.compress(chunk))
            if progress is not None:
                progress(len(chunk))
    except (OSError, NixFormatError) as exc:
        raise ClientError(f"cannot read {info.path} from {real_path}: {exc}") from exc
    result = dumper.result
    if result.nar_size != expected_size:
        raise NarMismatch(
            str(info.path), f"its NAR has {result.nar_size} bytes, the store records NarSize {expected_size}"
        )
    if result.nar_hash != info.nar_hash:
        raise NarMismatch(
            str(info.path),
            f"its NAR hashes to {format_sha256(result.nar_hash)}, "
            f"the store records NarHash {format_sha256(info.nar_hash)}",
        )
    if compressor is not None:
        emit(compressor.flush())
    rendered = render_listing(result.listing) if listing and result.listing is not None else None
    return NarOutcome(expected_size, file_size, format_sha256(file_sha.digest()), rendered)
