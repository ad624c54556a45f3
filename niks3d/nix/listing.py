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
    "parse_listing",
    "regular_node",
    "render_listing",
    "symlink_node",
]

import json
import re
from typing import Any

from niks3d.nix.errors import NixFormatError

# Nodes from the root (root = 1): niks3d.nix.nar.MAX_DEPTH, which imports this module. No NAR niks3d accepts is
# nested deeper, so no deeper listing can describe one.
MAX_DEPTH = 64

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


def _parse_node(value: object, where: str, depth: int) -> ListingNode:
    """One node of a parsed listing, checked against the shapes of the module docstring."""
    if depth > MAX_DEPTH:
        raise NixFormatError(f"listing: {where} is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(value, dict):
        raise NixFormatError(f"listing: {where} must be an object")
    kind = value.get("type")
    allowed = (
        {
            "regular": {"type", "size", "executable", "narOffset"},
            "directory": {"type", "entries"},
            "symlink": {"type", "target"},
        }.get(kind)
        if isinstance(kind, str)
        else None
    )
    if allowed is None:
        raise NixFormatError(f"listing: {where} has unknown type {kind!r}")
    if extra := sorted(set(value) - allowed):
        raise NixFormatError(f"listing: {where} ({kind}) has unknown field(s) {', '.join(extra)}")
    if kind == "symlink":
        target = value.get("target")
        if not isinstance(target, str) or not target:
            raise NixFormatError(f"listing: {where} must have a non-empty string target")
        return {"type": "symlink", "target": target}
    if kind == "directory":
        entries = value.get("entries")
        if not isinstance(entries, dict):
            raise NixFormatError(f"listing: {where} must have an object of entries")
        node = directory_node()
        for name, child in entries.items():
            if not name or name in (".", "..") or "/" in name or "\0" in name:
                raise NixFormatError(f"listing: {where} has an invalid entry name {name[:80]!r}")
            node["entries"][name] = _parse_node(child, f"{where}/{name[:80]}", depth + 1)
        return node
    size, offset, executable = value.get("size"), value.get("narOffset", 0), value.get("executable", False)
    for field, number in (("size", size), ("narOffset", offset)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise NixFormatError(f"listing: {where} must have a non-negative integer {field}")
    if not isinstance(executable, bool):
        raise NixFormatError(f"listing: {where} has a non-boolean executable")
    assert isinstance(size, int) and isinstance(offset, int)
    return regular_node(size, executable=executable, nar_offset=offset)


def parse_listing(body: bytes) -> ListingNode:
    """The root node of the ``.ls`` file ``body``, as any Nix writes it; :class:`NixFormatError` naming the problem.

    Accepts what :func:`render_listing` writes (raw non-UTF-8 bytes included) and the other Nix versions' forms of
    the same listing (keys in any order, ``"executable":false``, ``"narOffset":0``); ``render_listing`` of the
    result is the canonical bytes, so two listings say the same exactly when those bytes are equal.
    """
    try:
        document = json.loads(body.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as exc:
        raise NixFormatError(f"listing: not JSON: {exc}") from None
    except RecursionError:
        raise NixFormatError(f"listing: nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(document, dict):
        raise NixFormatError("listing: must be a JSON object")
    if document.get("version") != 1 or isinstance(document.get("version"), bool):
        raise NixFormatError(f"listing: version must be 1, got {document.get('version')!r}")
    if extra := sorted(set(document) - {"version", "root"}):
        raise NixFormatError(f"listing: unknown field(s) {', '.join(extra)}")
    if "root" not in document:
        raise NixFormatError("listing: has no root")
    return _parse_node(document["root"], "the root", 1)
