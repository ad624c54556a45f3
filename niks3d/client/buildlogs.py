"""Build logs in the local store: where Nix keeps them, and how they are recompressed for the cache.

Nix writes the log of ``/nix/store/<h>-<n>.drv`` to ``<log dir>/drvs/<h[0:2]>/<h[2:]>-<n>.drv``, compressed
with bzip2 (``.bz2``, the default) or plain when ``compress-build-log = false``. The cache stores it as
``log/<drv basename>``, compressed with zstd and served with ``Content-Encoding: zstd``.
"""

from __future__ import annotations

__all__ = ["compress_log", "find_build_log", "read_derivation"]

import bz2
from collections.abc import Callable
from pathlib import Path

import zstandard

from niks3d.client.store import LocalStore
from niks3d.errors import ClientError
from niks3d.nix.storepath import StorePath

_READ_SIZE = 1 << 20


def find_build_log(deriver: StorePath, store: LocalStore) -> Path | None:
    """The file holding the build log of ``deriver``, or None if the store has none."""
    base = deriver.basename
    directory = store.log_dir / "drvs" / base[:2]
    for name in (base[2:] + ".bz2", base[2:]):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def read_derivation(deriver: StorePath, store: LocalStore, *, limit: int = 1024 * 1024) -> bytes | None:
    """The contents of the ``.drv`` file ``deriver`` (the proof a log needs), or None if the store lacks it."""
    try:
        with open(store.real_path(deriver), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def compress_log(source: Path, sink: Callable[[bytes], object], *, level: int = 3) -> int:
    """Stream the log in ``source`` (bzip2 or plain) through zstd into ``sink``; return the plain size.

    Memory stays bounded by the read size whatever the log's size. Raises :class:`ClientError` naming the
    file when it cannot be read or its bzip2 data is corrupt.
    """
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    total = 0
    try:
        with bz2.open(source, "rb") if source.suffix == ".bz2" else open(source, "rb") as handle:
            while chunk := handle.read(_READ_SIZE):
                total += len(chunk)
                out = compressor.compress(chunk)
                if out:
                    sink(out)
    except (OSError, EOFError) as exc:
        raise ClientError(f"cannot read build log {source}: {exc}") from None
    sink(compressor.flush())
    return total
