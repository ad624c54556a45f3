"""The incremental NAR validator: a NAR fed in chunks of any size, held to the parser rules of docs/protocol.md 1.3
(plus the canonical grammar of 1.1).

:class:`NarValidator` raises :class:`~niks3d.nix.errors.InvalidNar` with the byte offset and the reason at the
first problem, and gives a :class:`~niks3d.nix.nar.NarResult` (hash, size, optional listing) at the end.
"""

from __future__ import annotations

__all__ = ["NarValidator", "validate_nar"]

import hashlib
from collections.abc import Generator
from typing import BinaryIO

from niks3d.nix.errors import InvalidNar
from niks3d.nix.listing import ListingNode, decode_name, directory_node, regular_node, symlink_node
from niks3d.nix.nar import MAGIC, MAGIC_TEXT, MAX_DEPTH, MAX_NAME, MAX_TAG, MAX_TARGET, NarResult, display_path, nar_str

# The parser is a generator: it yields n > 0 to ask for the next n bytes (sent back as bytes), or -n to have
# n bytes of file contents skipped (hashed and counted, never buffered; None is sent back).
_Parser = Generator[int, bytes | None, ListingNode | None]
_Step = Generator[int, bytes | None, bytes]
_OPEN_NODE = (b"(", b"type")
_OPEN_ENTRY = (b"(", b"name")
_EXPECTED: dict[tuple[bytes, ...], bytes] = {
    tags: b"".join(nar_str(t) for t in tags) for tags in (_OPEN_NODE, _OPEN_ENTRY, (b"node",), (b")",), (b"target",))
}


def _where(path: bytes) -> str:
    return f"in '{display_path(path)}'"


class NarValidator:
    """Checks a NAR fed in chunks of any size; :meth:`finish` returns its hash, size and (optional) listing.

    Only keywords, names and symlink targets are buffered (each is capped), never file contents. The first
    problem raises :class:`InvalidNar` with its byte offset; the validator then stays failed.
    """

    def __init__(self, *, listing: bool = False) -> None:
        self._want_listing = listing
        self._sha = hashlib.sha256()
        self._offset = 0  # bytes handed to the parser so far
        self._buf = bytearray()
        self._need = 0
        self._skip = 0
        self._expecting: tuple[str, bytes] = ("the archive magic", b"")  # for truncation messages
        self._error: InvalidNar | None = None
        self._done = False
        self._root: ListingNode | None = None
        self._parser = self._parse()
        self._advance(None)

    @property
    def done(self) -> bool:
        """True once the closing ``)`` of the root node has been read."""
        return self._done

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the NAR; raises :class:`InvalidNar` as soon as a problem is visible."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        end = len(view)
        if not end:
            return
        self._sha.update(view)
        pos = 0
        try:
            while pos < end:
                if self._done:
                    raise InvalidNar("trailing data after the end of the archive", offset=self._offset)
                if self._skip:
                    step = min(self._skip, end - pos)
                    pos += step
                    self._offset += step
                    self._skip -= step
                    if not self._skip:
                        self._advance(None)
                    continue
                need = self._need
                if not self._buf and end - pos >= need:
                    token = bytes(view[pos : pos + need])
                    pos += need
                else:
                    step = min(need - len(self._buf), end - pos)
                    self._buf += view[pos : pos + step]
                    pos += step
                    if len(self._buf) < need:
                        continue
                    token = bytes(self._buf)
                    self._buf.clear()
                self._offset += need
                self._advance(token)
        except InvalidNar as exc:
            self._error = exc
            raise

    def finish(self) -> NarResult:
        """Declare the end of input; raises :class:`InvalidNar` if the archive is incomplete."""
        if self._error is not None:
            raise self._error
        if not self._done:
            what, path = self._expecting
            where = f" {_where(path)}" if path else ""
            self._error = InvalidNar(
                f"truncated archive: input ends inside {what}{where}", offset=self._offset + len(self._buf)
            )
            raise self._error
        return NarResult(self._sha.digest(), self._offset, self._root)

    def _advance(self, value: bytes | None) -> None:
        try:
            request = self._parser.send(value)
        except StopIteration as stop:
            self._done = True
            self._root = stop.value
            return
        if request > 0:
            self._need = request
        else:
            self._skip = -request

    # -- grammar ------------------------------------------------------------------------------------------

    def _read_u64(self, what: str, path: bytes) -> Generator[int, bytes | None, int]:
        self._expecting = (what, path)
        raw = yield 8
        assert raw is not None
        return int.from_bytes(raw, "little")

    def _read_str(self, limit: int, what: str, path: bytes) -> _Step:
        """A length-prefixed, zero-padded string of 1 to ``limit`` bytes, usually in one request.

        The first request takes 16 bytes, enough for strings of up to 8 bytes. For an empty string that
        reads 8 bytes of the next token too, which is harmless: no caller accepts an empty string.
        """
        start = self._offset
        self._expecting = (what, path)
        raw = yield 16
        assert raw is not None
        length = int.from_bytes(raw[:8], "little")
        if length > limit:
            raise InvalidNar(
                f"{what} {_where(path)} is {length} bytes long, more than the limit of {limit}", offset=start
            )
        body = raw[8:] if length else b""
        if length > 8:
            rest = yield ((length + 7) & ~7) - 8
            assert rest is not None
            body += rest
        if body[length:].strip(b"\0"):
            raise InvalidNar(f"non-zero padding after {what} {_where(path)}", offset=start + 8 + length)
        return body[:length]

    def _expect(self, tags: tuple[bytes, ...], path: bytes, context: str) -> Generator[int, bytes | None, None]:
        """The keywords ``tags`` in a row, read in one request; a mismatch is diagnosed token by token."""
        start = self._offset
        expected = _EXPECTED[tags]
        self._expecting = ("tag '" + "', '".join(t.decode() for t in tags) + "'", path)
        raw = yield len(expected)
        assert raw is not None
        if raw == expected:
            return
        pos = 0
        for tag in tags:
            encoded = nar_str(tag)
            if raw[pos : pos + len(encoded)] == encoded:
                pos += len(encoded)
                continue
            length = int.from_bytes(raw[pos : pos + 8], "little")
            if length > MAX_TAG:
                raise InvalidNar(
                    f"tag '{tag.decode()}' {_where(path)} is {length} bytes long, more than the limit of {MAX_TAG}",
                    offset=start + pos,
                )
            end = pos + 8 + ((length + 7) & ~7)
            if end > len(raw):  # the token is longer than the keywords: read the rest of it
                more = yield end - len(raw)
                assert more is not None
                raw += more
            if raw[pos + 8 + length : end].strip(b"\0"):
                raise InvalidNar(
                    f"non-zero padding after tag '{tag.decode()}' {_where(path)}",
                    offset=start + pos + 8 + length,
                )
            got = raw[pos + 8 : pos + 8 + length]
            raise InvalidNar(f"expected tag '{tag.decode()}' {context} {_where(path)}, got {got!r}", offset=start + pos)

    def _parse(self) -> _Parser:
        length = yield from self._read_u64("the archive magic", b"")
        if length == len(MAGIC_TEXT):
            raw = yield len(MAGIC) - 8
            if raw == MAGIC[8:]:
                return (yield from self._parse_node(1, b"/"))
        raise InvalidNar("input doesn't look like a Nix archive (bad magic)", offset=0)

    def _parse_node(self, depth: int, path: bytes) -> _Parser:
        if depth > MAX_DEPTH:
            raise InvalidNar(f"'{display_path(path)}' is nested more than {MAX_DEPTH} levels deep", offset=self._offset)
        yield from self._expect(_OPEN_NODE, path, "at the start of a node")
        start = self._offset
        kind = yield from self._read_str(MAX_TAG, "the node type", path)
        if kind == b"regular":
            return (yield from self._parse_regular(path))
        if kind == b"directory":
            return (yield from self._parse_directory(depth, path))
        if kind == b"symlink":
            yield from self._expect((b"target",), path, "in a symlink")
            start = self._offset
            target = yield from self._read_str(MAX_TARGET, "the symlink target", path)
            if not target or b"\0" in target:
                raise InvalidNar(f"invalid symlink target {target!r} {_where(path)}", offset=start)
            yield from self._expect((b")",), path, "after the symlink target")
            return symlink_node(target) if self._want_listing else None
        raise InvalidNar(f"unknown file type {kind!r} {_where(path)}", offset=start)

    def _parse_regular(self, path: bytes) -> _Parser:
        start = self._offset
        tag = yield from self._read_str(MAX_TAG, "a tag", path)
        executable = tag == b"executable"
        if executable:
            start = self._offset
            marker = yield from self._read_u64("the executable marker", path)
            if marker:
                raise InvalidNar(f"executable marker has a non-empty value {_where(path)}", offset=start)
            start = self._offset
            tag = yield from self._read_str(MAX_TAG, "a tag", path)
        if tag != b"contents":
            raise InvalidNar(f"expected tag 'contents' {_where(path)}, got {tag!r}", offset=start)
        size = yield from self._read_u64("the size of the contents", path)
        nar_offset = self._offset
        if size:
            self._expecting = ("the contents of the file", path)
            yield -size
        if size % 8:
            self._expecting = ("the padding after the contents of the file", path)
            pad = yield 8 - size % 8
            if pad is None or pad.strip(b"\0"):
                raise InvalidNar(f"non-zero padding after the contents {_where(path)}", offset=nar_offset + size)
        yield from self._expect((b")",), path, "after the contents")
        if not self._want_listing:
            return None
        return regular_node(size, executable=executable, nar_offset=nar_offset)

    def _parse_directory(self, depth: int, path: bytes) -> _Parser:
        node = directory_node() if self._want_listing else None
        previous: bytes | None = None
        prefix = path if path.endswith(b"/") else path + b"/"
        while True:
            start = self._offset
            tag = yield from self._read_str(MAX_TAG, "a tag", path)
            if tag == b")":
                return node
            if tag != b"entry":
                raise InvalidNar(f"expected tag 'entry' or ')' {_where(path)}, got {tag!r}", offset=start)
            yield from self._expect(_OPEN_ENTRY, path, "after 'entry'")
            start = self._offset
            name = yield from self._read_str(MAX_NAME, "an entry name", path)
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise InvalidNar(f"invalid file name {name!r} {_where(path)}", offset=start)
            if previous is not None and name <= previous:
                problem = "duplicate entry" if name == previous else "entries not sorted"
                raise InvalidNar(
                    f"NAR directory is not sorted ({problem}: {name!r} after {previous!r}) {_where(path)}",
                    offset=start,
                )
            previous = name
            yield from self._expect((b"node",), prefix + name, "after the entry name")
            child = yield from self._parse_node(depth + 1, prefix + name)
            yield from self._expect((b")",), path, "at the end of an entry")
            if node is not None and child is not None:
                node["entries"][decode_name(name)] = child


def validate_nar(stream: BinaryIO, *, listing: bool = False, chunk_size: int = 1 << 20) -> NarResult:
    """Read ``stream`` to its end and validate it as a NAR; returns hash, size and (optional) listing."""
    validator = NarValidator(listing=listing)
    while chunk := stream.read(chunk_size):
        validator.feed(chunk)
    return validator.finish()
