"""The ``.ls`` NAR listing: its node shapes and its exact byte rendering (docs/protocol.md 4.2).

A listing is ``{"version":1,"root":<node>}`` where a node is one of::

    {"type":"regular","size":N[,"executable":true][,"narOffset":M]}
    {"type":"directory","entries":{"<name>":<node>,...}}
    {"type":"symlink","target":"<target>"}

``narOffset`` is the offset of the file's contents inside the uncompressed NAR. :func:`render_listing`
writes the bytes Nix 2.8 writes (``BinaryCacheStore`` with ``write-nar-listing=1``): compact, keys in the
order above, ``executable`` only when true, ``narOffset`` only when non-zero, entries sorted by the raw
bytes of their names.

Names and symlink targets are bytes on disk. In node dicts they are ``str`` decoded from UTF-8 with
``surrogateescape`` (like :func:`os.fsdecode` on Linux), so every byte string round-trips. Rendering
follows Nix 2.8's own JSON writer (``toJSON`` in ``libutil/json.cc``) byte for byte: ``"`` and ``\\``
are backslash-escaped, ``\\n``, ``\\r`` and ``\\t`` get their short escapes, the other bytes below 0x20
become ``\\u00xx`` (lower-case hex), and every other byte, including 0x7f and bytes that are not valid
UTF-8, is written raw. A listing with a name that is not UTF-8 is therefore not strict JSON, exactly as
with Nix (the golden tests check this against real Nix).
"""

from __future__ import annotations

__all__ = [
    "ListingNode",
    "decode_name",
    "directory_node",
    "regular_node",
    "render_listing",
    "symlink_node",
]

import re
from typing import Any

ListingNode = dict[str, Any]
"""One node of a listing, shaped as in the module docstring (a JSON object)."""

_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')
_SHORT_ESCAPES = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}


def decode_name(raw: bytes) -> str:
    """Turn a raw file name or symlink target into the ``str`` used in listing nodes (lossless)."""
    return raw.decode("utf-8", "surrogateescape")


def regular_node(size: int, *, executable: bool, nar_offset: int) -> ListingNode:
    """The node of a regular file of ``size`` bytes whose contents start at ``nar_offset`` in the NAR."""
    node: ListingNode = {"type": "regular", "size": size}
    if executable:
        node["executable"] = True
    if nar_offset:
        node["narOffset"] = nar_offset
    return node


def symlink_node(target: bytes) -> ListingNode:
    """The node of a symlink pointing at the raw ``target`` bytes."""
    return {"type": "symlink", "target": decode_name(target)}


def directory_node() -> ListingNode:
    """An empty directory node; add children to ``node["entries"]`` keyed by :func:`decode_name` names."""
    return {"type": "directory", "entries": {}}


def _escape_byte(match: re.Match[bytes]) -> bytes:
    byte = match.group()[0]
    short = _SHORT_ESCAPES.get(byte)
    if short is not None:
        return short
    return b"\\u%04x" % byte


def _string(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    return b'"' + _NEEDS_ESCAPE.sub(_escape_byte, raw) + b'"'


def _raw_key(item: tuple[str, ListingNode]) -> bytes:
    return item[0].encode("utf-8", "surrogateescape")


def _int(value: object, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"listing {what} must be a non-negative integer, got {value!r}")
    return b"%d" % value


def _render_node(node: ListingNode, out: list[bytes]) -> None:
    kind = node.get("type")
    if kind == "regular":
        out.append(b'{"type":"regular","size":')
        out.append(_int(node.get("size"), "size"))
        if node.get("executable"):
            out.append(b',"executable":true')
        offset = node.get("narOffset", 0)
        if offset:
            out.append(b',"narOffset":')
            out.append(_int(offset, "narOffset"))
        out.append(b"}")
    elif kind == "symlink":
        target = node.get("target")
        if not isinstance(target, str):
            raise ValueError(f"listing symlink target must be a string, got {target!r}")
        out.append(b'{"type":"symlink","target":')
        out.append(_string(target))
        out.append(b"}")
    elif kind == "directory":
        entries = node.get("entries")
        if not isinstance(entries, dict):
            raise ValueError(f"listing directory entries must be an object, got {entries!r}")
        out.append(b'{"type":"directory","entries":{')
        first = True
        for name, child in sorted(entries.items(), key=_raw_key):
            if not first:
                out.append(b",")
            first = False
            out.append(_string(name))
            out.append(b":")
            _render_node(child, out)
        out.append(b"}}")
    else:
        raise ValueError(f"listing node has unknown type {kind!r}")


def render_listing(root: ListingNode) -> bytes:
    """Render the complete ``.ls`` file for the NAR whose root node is ``root``, byte-identical to Nix 2.8.

    Directory entries are written sorted by their raw bytes, as Nix does, whatever the dict's order.
    """
    out: list[bytes] = [b'{"version":1,"root":']
    _render_node(root, out)
    out.append(b"}")
    return b"".join(out)
