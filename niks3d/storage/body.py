"""A request body that botocore and aiohttp read without copying it (docs/storage.md, "Request bodies").

botocore turns a ``bytes`` body of PutObject or UploadPart into an ``io.BytesIO``. Sending that costs three
copies of the whole body before the kernel's: aiohttp takes the BytesIO's buffer (which un-shares it from the
``bytes``), then reads it in 64 KiB pieces to write them, and the SigV4 signer reads it in 1 MiB pieces to hash
it. For the NARs that stock Nix PUTs (docs/api.md) those copies cost more CPU than decompressing them.

:class:`BufferBody` hands out ``memoryview`` slices of the caller's buffer instead. To botocore it is a
seekable file: it has a length (Content-Length), it can be read to compute the payload's SHA-256 for the
signature, and rewound before a retry. To aiohttp it is an async iterable whose slices are written to the
socket as they are, under the Content-Length botocore set. The caller must not change the buffer until the
call returned.
"""

from __future__ import annotations

__all__ = ["BufferBody"]

import io
from collections.abc import AsyncIterator

# The slices written to the socket: big enough that a part costs few writes, small enough for back-pressure.
PIECE = 1 << 20


class BufferBody:
    """A read-only, seekable, async-iterable view of ``data``; see the module docstring."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._view = view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = min(max(base + offset, 0), len(self._view))
        return self._pos

    def read(self, size: int = -1) -> memoryview | bytes:
        """The next ``size`` bytes (all that is left for a negative size); ``b""`` at the end."""
        start = self._pos
        if start >= len(self._view):
            return b""
        end = len(self._view) if size is None or size < 0 else min(start + size, len(self._view))
        self._pos = end
        return self._view[start:end]

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[memoryview]:
        view = self._view
        for start in range(self._pos, len(view), PIECE):
            yield view[start : start + PIECE]
