"""Streaming NAR (Nix ARchive) writer and incremental validator, giving NarHash, NarSize and the listing.

:class:`NarDumper` serialises a file tree exactly as ``nix-store --dump`` does (protocol.md 1.2) and yields
it in large chunks while it hashes; memory stays bounded whatever the file sizes. :class:`NarValidator`
takes a NAR in chunks of any size and enforces the parser rules of protocol.md 1.3 (plus the canonical
grammar of 1.1), raising :class:`~niks3d.nix.errors.InvalidNar` with the byte offset and the reason. Both
produce a :class:`NarResult`.

Depth counts nodes from the root, which is at depth 1; :data:`MAX_DEPTH` nodes deep is the most allowed.
That is Nix's ``narMaxDepth`` rule (``depth >= 64`` refused with the root at 0). The dumper refuses deeper
trees too, because the server would refuse their NAR.
"""

from __future__ import annotations

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME",
    "MAX_TAG",
    "MAX_TARGET",
    "NarDumper",
    "NarResult",
    "NarValidator",
    "dump_path",
    "validate_nar",
]

import hashlib
import os
import stat
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from niks3d.nix.errors import InvalidNar, NixFormatError
from niks3d.nix.listing import (
    ListingNode,
    decode_name,
    directory_node,
    regular_node,
    render_listing,
    symlink_node,
)

MAX_DEPTH = 64  # nodes from the root (root = 1), Nix's narMaxDepth
MAX_NAME = 255  # bytes in a directory entry name
MAX_TARGET = 4095  # bytes in a symlink target
MAX_TAG = 32  # bytes in a keyword where the grammar expects one

_MAGIC_TEXT = b"nix-archive-1"
_SMALL_FILE = 64 << 10  # files up to this size go out in one piece with their header
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never follow, never block (fifo)
_PAD = [b"\0" * ((8 - i) % 8) for i in range(8)]  # _PAD[len % 8] pads a string of that length


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _str(value: bytes) -> bytes:
    return _u64(len(value)) + value + _PAD[len(value) % 8]


_MAGIC = _str(_MAGIC_TEXT)
_OPEN_TYPE = _str(b"(") + _str(b"type")
_REGULAR = _OPEN_TYPE + _str(b"regular") + _str(b"contents")
_EXECUTABLE = _OPEN_TYPE + _str(b"regular") + _str(b"executable") + _str(b"") + _str(b"contents")
_SYMLINK = _OPEN_TYPE + _str(b"symlink") + _str(b"target")
_DIRECTORY = _OPEN_TYPE + _str(b"directory")
_ENTRY = _str(b"entry") + _str(b"(") + _str(b"name")
_NODE = _str(b"node")
_CLOSE = _str(b")")
_CLOSE_ENTRY = _CLOSE + _CLOSE  # the node's ")" then the entry's ")"


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


def _display(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")  # printable in any log, unlike surrogate escapes


# ----------------------------------------------------------------------------------------------- writer


class _Chunker:
    """Coalesces small pieces into chunks of about ``chunk_size`` bytes; hashes and counts its output."""

    __slots__ = ("chunk_size", "emitted", "parts", "pending", "sha")

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.parts: list[bytes] = []
        self.pending = 0
        self.emitted = 0
        self.sha = hashlib.sha256()

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.pending += len(data)

    @property
    def full(self) -> bool:
        return self.pending >= self.chunk_size

    @property
    def offset(self) -> int:
        return self.emitted + self.pending

    def take(self) -> bytes:
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = []
        self.pending = 0
        return self.direct(data)

    def direct(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.emitted += len(data)
        return data


def _read_exact(fd: int, count: int, path: bytes) -> bytes:
    data = os.read(fd, count)
    if len(data) == count:
        return data
    parts = [data]
    got = len(data)
    while got < count:
        more = os.read(fd, count - got)
        if not more:
            raise NixFormatError(f"file '{_display(path)}' shrank while it was being dumped")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


@dataclass(slots=True)
class _Frame:
    path: bytes
    entries: Iterator[tuple[bytes, str]]
    listing: dict[str, ListingNode] | None
    closer: bytes


class NarDumper:
    """The NAR of ``path`` as an iterable of ``bytes`` chunks; then ``.result`` has hash, size, listing.

    Files are read in pieces of at most ``chunk_size`` bytes; headers and small files are coalesced so
    that chunks are about ``chunk_size`` long (the last one may be shorter). Iterate only once. Raises
    ``OSError`` when the tree cannot be read and :class:`NixFormatError` for a file type a NAR cannot hold
    (naming the file), a tree deeper than :data:`MAX_DEPTH`, or a file that shrinks while it is read.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_size: int = 1 << 20, listing: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._path = os.fsencode(path)
        self._chunk_size = chunk_size
        self._want_listing = listing
        self._started = False
        self._result: NarResult | None = None
        self._out = _Chunker(chunk_size)
        self._stack: list[_Frame] = []

    @property
    def result(self) -> NarResult:
        """Hash, size and listing; available once the iteration has run to its end."""
        if self._result is None:
            raise RuntimeError(f"the NAR of {_display(self._path)} has not been fully iterated yet")
        return self._result

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a NarDumper can be iterated only once")
        self._started = True
        return self._generate()

    def _generate(self) -> Iterator[bytes]:
        out = self._out = _Chunker(self._chunk_size)
        out.add(_MAGIC)
        stack = self._stack
        root_holder: dict[str, ListingNode] | None = {} if self._want_listing else None
        mode = os.lstat(self._path).st_mode
        yield from self._visit(self._path, _kind(mode, self._path), b"", b"", root_holder)
        while stack:
            frame = stack[-1]
            item = next(frame.entries, None)
            if item is None:
                stack.pop()
                out.add(frame.closer)
                if out.full:
                    yield out.take()
                continue
            name, kind = item
            prefix = _ENTRY + _str(name) + _NODE
            yield from self._visit(frame.path + b"/" + name, kind, name, prefix, frame.listing)
        if out.pending:
            yield out.take()
        root = root_holder[""] if root_holder is not None else None
        self._result = NarResult(out.sha.digest(), out.emitted, root)

    def _visit(
        self,
        path: bytes,
        kind: str,
        name: bytes,
        prefix: bytes,
        parent: dict[str, ListingNode] | None,
    ) -> Iterator[bytes]:
        out, stack = self._out, self._stack
        if len(stack) >= MAX_DEPTH:
            raise NixFormatError(f"'{_display(path)}' is nested more than {MAX_DEPTH} levels deep")
        closer = _CLOSE_ENTRY if prefix else _CLOSE
        key = decode_name(name) if parent is not None else ""
        if kind == "regular":
            fd = os.open(path, _OPEN_FLAGS)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise NixFormatError(f"file '{_display(path)}' changed type while it was being dumped")
                size = st.st_size
                executable = bool(st.st_mode & stat.S_IXUSR)
                head = prefix + (_EXECUTABLE if executable else _REGULAR) + _u64(size)
                if parent is not None:
                    offset = out.offset + len(head)
                    parent[key] = regular_node(size, executable=executable, nar_offset=offset)
                if size <= _SMALL_FILE and size < out.chunk_size - out.pending:  # one piece, no generator
                    data = _read_exact(fd, size, path) if size else b""
                    out.add(head + data + _PAD[size % 8] + closer)
                else:
                    out.add(head)
                    yield from self._contents(fd, size, path)
                    out.add(_PAD[size % 8] + closer)
            finally:
                os.close(fd)
        elif kind == "symlink":
            target = os.readlink(path)  # noqa: PTH115 -- raw bytes; pathlib has no bytes paths
            out.add(prefix + _SYMLINK + _str(target) + closer)
            if parent is not None:
                parent[key] = symlink_node(target)
        else:
            with os.scandir(path) as listing:
                entries = sorted((entry.name, _entry_kind(entry)) for entry in listing)
            out.add(prefix + _DIRECTORY)
            children: dict[str, ListingNode] | None = None
            if parent is not None:
                node = directory_node()
                parent[key] = node
                children = node["entries"]
            stack.append(_Frame(path, iter(entries), children, closer))
        if out.full:
            yield out.take()

    def _contents(self, fd: int, size: int, path: bytes) -> Iterator[bytes]:
        out = self._out
        chunk_size = out.chunk_size
        remaining = size
        while remaining:
            if out.full:
                yield out.take()
            count = min(remaining, chunk_size - out.pending)
            data = _read_exact(fd, count, path)
            remaining -= count
            if count == chunk_size:  # nothing pending: hand the read buffer out as it is
                yield out.direct(data)
            else:
                out.add(data)


def _kind(mode: int, path: bytes) -> str:
    if stat.S_ISREG(mode):
        return "regular"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    raise NixFormatError(f"file '{_display(path)}' has an unsupported type (mode {stat.filemode(mode)})")


def _entry_kind(entry: os.DirEntry[bytes]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "directory"
    if entry.is_file(follow_symlinks=False):
        return "regular"
    return _kind(entry.stat(follow_symlinks=False).st_mode, entry.path)


def dump_path(
    path: str | os.PathLike[str],
    sink: Callable[[bytes], object] | None = None,
    *,
    chunk_size: int = 1 << 20,
    listing: bool = True,
) -> NarResult:
    """Dump ``path`` as a NAR, passing each chunk to ``sink`` when given; return hash, size and listing."""
    dumper = NarDumper(path, chunk_size=chunk_size, listing=listing)
    if sink is None:
        for _ in dumper:
            pass
    else:
        for chunk in dumper:
            sink(chunk)
    return dumper.result


# ----------------------------------------------------------------------------------------------- reader

# The parser is a generator: it yields n > 0 to ask for the next n bytes (sent back as bytes), or -n to have
# n bytes of file contents skipped (hashed and counted, never buffered; None is sent back).
_Parser = Generator[int, bytes | None, ListingNode | None]
_Step = Generator[int, bytes | None, bytes]
_OPEN_NODE = (b"(", b"type")
_OPEN_ENTRY = (b"(", b"name")
_EXPECTED: dict[tuple[bytes, ...], bytes] = {
    tags: b"".join(_str(t) for t in tags) for tags in (_OPEN_NODE, _OPEN_ENTRY, (b"node",), (b")",), (b"target",))
}


def _where(path: bytes) -> str:
    return f"in '{_display(path)}'"


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
            encoded = _str(tag)
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
        if length == len(_MAGIC_TEXT):
            raw = yield len(_MAGIC) - 8
            if raw == _MAGIC[8:]:
                return (yield from self._parse_node(1, b"/"))
        raise InvalidNar("input doesn't look like a Nix archive (bad magic)", offset=0)

    def _parse_node(self, depth: int, path: bytes) -> _Parser:
        if depth > MAX_DEPTH:
            raise InvalidNar(f"'{_display(path)}' is nested more than {MAX_DEPTH} levels deep", offset=self._offset)
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
