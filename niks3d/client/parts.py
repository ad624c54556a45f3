"""Cutting a compressed stream into the parts of an S3 multipart upload.

Every part but the last has exactly ``part_size`` bytes (the server presigns for that size and S3 wants at
least 5 MiB); the last one has what is left. :class:`PartSplitter` holds only the part being filled, so a NAR
of any size passes through in bounded memory. Parts live in anonymous memory maps rather than ``bytearray``:
their pages are committed only as they are written, and unmapped as soon as the last reference goes, which
keeps the process's resident memory at the parts really alive (malloc'd 32 MiB blocks were measured to leave
one part's worth of fragmentation behind).
"""

from __future__ import annotations

__all__ = ["PartSplitter", "part_count", "parts_in_flight"]

import mmap


def part_count(total: int, part_size: int) -> int:
    """How many parts ``total`` bytes make (at least one: an empty object is one empty part)."""
    if part_size <= 0:
        raise ValueError(f"part size must be positive, got {part_size}")
    return max(1, -(-total // part_size))


def parts_in_flight(part_size: int, budget: int, *, highest: int = 8) -> int:
    """How many parts may wait or upload at once so that they and the one being filled fit in ``budget``.

    At least one (then the next part is compressed while the previous one uploads), at most ``highest``.
    """
    return max(1, min(highest, budget // max(1, part_size) - 1))


class PartSplitter:
    """Feeds of any size in; numbered parts of exactly ``part_size`` bytes out (the last from ``finish``).

    Each part is filled in place in a memory map of its final size and handed out as a ``memoryview`` of it,
    without a copy; the splitter keeps only the part being filled.
    """

    def __init__(self, part_size: int) -> None:
        if part_size <= 0:
            raise ValueError(f"part size must be positive, got {part_size}")
        self.part_size = part_size
        self._current: mmap.mmap | None = None
        self._filled = 0
        self._next = 1
        self.total = 0

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet in a part."""
        return self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]]:
        """Add ``data``; return the parts that are now complete, as ``(part number, bytes)``."""
        view = memoryview(data).cast("B")
        size = self.part_size
        parts: list[tuple[int, memoryview]] = []
        pos, end = 0, len(view)
        self.total += end
        while pos < end:
            if self._current is None:
                self._current = mmap.mmap(-1, size)
                self._filled = 0
            count = min(size - self._filled, end - pos)
            self._current[self._filled : self._filled + count] = view[pos : pos + count]
            self._filled += count
            pos += count
            if self._filled == size:
                parts.append(self._emit(memoryview(self._current)))
                self._current, self._filled = None, 0
        return parts

    def finish(self) -> tuple[int, memoryview] | None:
        """The last, possibly shorter part; None when the data ended exactly on a part boundary.

        A stream that produced no bytes at all still gives one empty part, so that the upload has a part.
        """
        if self._current is not None:
            last = memoryview(self._current)[: self._filled]
            self._current, self._filled = None, 0
            return self._emit(last)
        if self._next == 1:
            return self._emit(memoryview(b""))
        return None

    def _emit(self, data: memoryview) -> tuple[int, memoryview]:
        number = self._next
        self._next += 1
        return number, data
