"""Streaming decompression of NAR files as Nix compresses them: ``none``, ``xz``, ``zstd``, ``bzip2``, ``gzip``.

:class:`StreamDecompressor` takes the compressed bytes in chunks of any size and hands the decompressed bytes
to a sink in pieces of at most ``piece`` bytes, so memory stays bounded however well the input compresses (a
decompression bomb costs CPU, never memory). Concatenated streams (parallel xz/bzip2/gzip, several zstd frames)
are read as one, as Nix reads them. A damaged stream raises :class:`~niks3d.nix.errors.InvalidNar`; so does
:meth:`StreamDecompressor.finish` when the input stopped inside a stream.

:func:`sniff_compression` names the compression of a file from its first bytes (docs/protocol.md 4.6: Nix gives
``none`` and ``gzip`` NARs the same file name, so the name alone does not say).
"""

from __future__ import annotations

__all__ = ["SUPPORTED_COMPRESSIONS", "StreamDecompressor", "sniff_compression"]

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import IO, Protocol, cast

import zstandard

from niks3d.nix.errors import InvalidNar
from niks3d.nix.nar import MAGIC

SUPPORTED_COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "gzip")
PIECE = 1 << 20
_MAGICS = (
    (MAGIC, "none"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x1f\x8b", "gzip"),
)
# The longest magic above: enough bytes to sniff.
SNIFF_BYTES = len(MAGIC)

Sink = Callable[[bytes], None]


def sniff_compression(head: bytes) -> str | None:
    """The compression whose magic ``head`` starts with, or None if none matches (or ``head`` is too short)."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


class _Bounded(Protocol):
    """The shape of lzma/bz2/zlib decompressor objects (zlib's is adapted below)."""

    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _Zlib:
    """zlib's decompressobj with the ``needs_input``/``max_length`` interface of lzma and bz2."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # gzip framing
        self._needs_input = True

    @property
    def needs_input(self) -> bool:
        return self._needs_input

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        data = self._d.unconsumed_tail + data
        out = self._d.decompress(data, max(0, max_length))
        self._needs_input = not self._d.unconsumed_tail and not self._d.eof
        return out


class _Writer:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)


class StreamDecompressor:
    """Decompress ``compression`` incrementally into ``sink``; see the module docstring."""

    def __init__(self, compression: str, sink: Sink, *, piece: int = PIECE) -> None:
        if compression not in SUPPORTED_COMPRESSIONS:
            raise InvalidNar(
                f"compression {compression!r} is not supported; use one of {', '.join(SUPPORTED_COMPRESSIONS)}"
            )
        self.compression = compression
        self._sink = sink
        self._piece = piece
        self._zstd: zstandard.ZstdDecompressionWriter | None = None
        self._stream: _Bounded | None = None
        self._in_stream = False  # inside a stream that has not ended yet
        if compression == "zstd":
            self._zstd = zstandard.ZstdDecompressor().stream_writer(cast("IO[bytes]", _Writer(sink)), write_size=piece)

    def _new_stream(self) -> _Bounded:
        if self.compression == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        if self.compression == "bzip2":
            return bz2.BZ2Decompressor()
        return _Zlib()

    def feed(self, data: bytes) -> None:
        """Decompress the next chunk of input."""
        if not data:
            return
        if self.compression == "none":
            self._sink(data)
            return
        try:
            if self._zstd is not None:
                self._in_stream = True
                self._zstd.write(data)
                return
            self._feed_streams(data)
        except (lzma.LZMAError, OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise InvalidNar(f"the {self.compression} stream is corrupt: {exc}") from None

    def _feed_streams(self, data: bytes) -> None:
        while data:
            if self._stream is None:
                self._stream = self._new_stream()
                self._in_stream = True
            stream = self._stream
            out = stream.decompress(data, self._piece)
            data = b""
            while True:
                if out:
                    self._sink(out)
                if stream.eof or stream.needs_input:
                    break
                out = stream.decompress(b"", self._piece)
            if stream.eof:
                # Another stream may follow (parallel compressors concatenate them).
                data = stream.unused_data
                self._stream = None
                self._in_stream = False

    def finish(self) -> None:
        """The input ended: raise InvalidNar if it ended inside a compressed stream."""
        if self._zstd is not None:
            try:
                self._zstd.flush()  # type: ignore[no-untyped-call]
            except zstandard.ZstdError as exc:
                raise InvalidNar(f"the zstd stream is corrupt: {exc}") from None
            return
        if self._in_stream:
            raise InvalidNar(f"the {self.compression} stream is truncated")
