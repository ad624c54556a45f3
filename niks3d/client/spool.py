"""A write-once buffer for an object uploaded whole: in memory while small, then in a temporary file.

A presigned ``PUT`` needs the complete body and its ``Content-Length`` up front (S3 has no chunked uploads),
so objects below the multipart threshold are compressed into a :class:`Spool` first. Only the first
``memory_limit`` bytes stay in memory; past that everything goes to an anonymous temporary file, so that
several objects in flight keep the client's memory bounded. :meth:`Spool.chunks` reads it back (with
``pread``, so every try of an upload gets the body from the start) as often as needed.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MEMORY_LIMIT", "Spool"]

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import IO

DEFAULT_MEMORY_LIMIT = 4 << 20
_READ_SIZE = 1 << 20


class Spool:
    """Bytes written once (``write``), then read back any number of times (``chunks`` or ``getvalue``)."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT, directory: str | None = None) -> None:
        self._limit = memory_limit
        self._directory = directory
        self._memory: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    @property
    def on_disk(self) -> bool:
        """Whether the content went past the memory limit into a temporary file."""
        return self._file is not None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``."""
        if not data:
            return
        if self._memory is not None:
            if len(self._memory) + len(data) <= self._limit:
                self._memory += data
                self.size += len(data)
                return
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 -- closed in close()
            self._file.write(self._memory)
            self._memory = None
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)

    def _finish_writing(self) -> None:
        if self._file is not None:
            self._file.flush()

    def getvalue(self) -> bytes:
        """The whole content as bytes (reads the file back when on disk; meant for small spools and tests)."""
        self._finish_writing()
        if self._memory is not None:
            return bytes(self._memory)
        assert self._file is not None
        return os.pread(self._file.fileno(), self.size, 0)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The content from the start, in pieces of at most 1 MiB; file reads run in a worker thread."""
        self._finish_writing()
        if self._memory is not None:
            view = memoryview(self._memory)
            for start in range(0, self.size, _READ_SIZE):
                yield view[start : start + _READ_SIZE]
            return
        assert self._file is not None
        fd = self._file.fileno()
        offset = 0
        while offset < self.size:
            data = await asyncio.to_thread(os.pread, fd, min(_READ_SIZE, self.size - offset), offset)
            if not data:
                raise OSError(f"temporary upload file ended at {offset} of {self.size} bytes")
            offset += len(data)
            yield data

    def body(self) -> AsyncIterator[bytes | memoryview]:
        """A fresh request body that reads the content from the start (without copying what is in memory)."""
        return self.chunks()

    def close(self) -> None:
        """Drop the content and delete the temporary file."""
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
