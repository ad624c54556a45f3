"""The NAR (Nix ARchive) format shared by the writer and the validator: limits, framing, and the result.

A NAR is a sequence of length-prefixed strings, each padded with zeros to a multiple of 8 bytes, starting with
the magic ``nix-archive-1`` (docs/protocol.md 1.1). :mod:`niks3d.nix.nar_dump` writes one from a file tree as
``nix-store --dump`` does; :mod:`niks3d.nix.nar_read` checks one fed in chunks. Both give a :class:`NarResult`.

Depth counts nodes from the root, which is at depth 1; :data:`MAX_DEPTH` nodes deep is the most allowed.
That is Nix's ``narMaxDepth`` rule (``depth >= 64`` refused with the root at 0). The writer refuses deeper
trees too, because the server would refuse their NAR.
"""

from __future__ import annotations

__all__ = [
    "MAGIC",
    "MAGIC_TEXT",
    "MAX_DEPTH",
    "MAX_NAME",
    "MAX_TAG",
    "MAX_TARGET",
    "PADDING",
    "NarResult",
    "display_path",
    "nar_str",
    "nar_u64",
    "single_file_contents",
]

from dataclasses import dataclass

from niks3d.nix.listing import ListingNode, render_listing

MAX_DEPTH = 64  # nodes from the root (root = 1), Nix's narMaxDepth
MAX_NAME = 255  # bytes in a directory entry name
MAX_TARGET = 4095  # bytes in a symlink target
MAX_TAG = 32  # bytes in a keyword where the grammar expects one

MAGIC_TEXT = b"nix-archive-1"
PADDING = [b"\0" * ((8 - i) % 8) for i in range(8)]  # PADDING[len % 8] pads a string of that length


def nar_u64(value: int) -> bytes:
    """An integer as the NAR writes it: 8 bytes, little-endian."""
    return value.to_bytes(8, "little")


def nar_str(value: bytes) -> bytes:
    """A string as the NAR writes it: its length, its bytes, zeros up to a multiple of 8."""
    return nar_u64(len(value)) + value + PADDING[len(value) % 8]


MAGIC = nar_str(MAGIC_TEXT)


@dataclass(frozen=True, slots=True)
class NarResult:
    """What streaming a NAR gives besides its bytes: raw SHA-256 digest, size, listing root node."""

    nar_hash: bytes
    nar_size: int
    listing: ListingNode | None

    def listing_file(self) -> bytes:
        """The ``.ls`` file of this NAR, byte-identical to Nix's; needs a result computed with a listing."""
        if self.listing is None:
            raise ValueError("this NAR result was computed without a listing (listing=False)")
        return render_listing(self.listing)


def display_path(path: bytes) -> str:
    """A path inside a NAR, printable in any log (unlike surrogate escapes)."""
    return path.decode("utf-8", "backslashreplace")


def single_file_contents(nar: bytes) -> bytes | None:
    """The contents of a NAR that is one regular file (a ``.drv``, for example), or None for any other NAR.

    Exact: the NAR must be the canonical serialisation of one non-executable regular file, nothing before or
    after it, so the bytes returned are what the store path holds.
    """
    head = MAGIC + b"".join(nar_str(t) for t in (b"(", b"type", b"regular", b"contents"))
    if not nar.startswith(head) or len(nar) < len(head) + 8:
        return None
    size = int.from_bytes(nar[len(head) : len(head) + 8], "little")
    start = len(head) + 8
    contents = nar[start : start + size]
    if len(contents) != size or nar[start + size :] != PADDING[size % 8] + nar_str(b")"):
        return None
    return contents
