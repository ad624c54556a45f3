"""The streaming NAR writer: a file tree serialised exactly as ``nix-store --dump`` does (docs/protocol.md 1.2).

:class:`NarDumper` yields the NAR in large chunks while it hashes and counts it (and, if asked, builds the
``.ls`` listing); memory stays bounded whatever the file sizes.
"""

from __future__ import annotations

__all__ = ["NarDumper", "dump_path"]

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from niks3d.nix.errors import NixFormatError
from niks3d.nix.listing import ListingNode, decode_name, directory_node, regular_node, symlink_node
from niks3d.nix.nar import MAGIC, MAX_DEPTH, PADDING, NarResult, display_path, nar_str, nar_u64

_SMALL_FILE = 64 << 10  # files up to this size go out in one piece with their header
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never follow, never block (fifo)
_OPEN_TYPE = nar_str(b"(") + nar_str(b"type")
_REGULAR = _OPEN_TYPE + nar_str(b"regular") + nar_str(b"contents")
_EXECUTABLE = _OPEN_TYPE + nar_str(b"regular") + nar_str(b"executable") + nar_str(b"") + nar_str(b"contents")
_SYMLINK = _OPEN_TYPE + nar_str(b"symlink") + nar_str(b"target")
_DIRECTORY = _OPEN_TYPE + nar_str(b"directory")
_ENTRY = nar_str(b"entry") + nar_str(b"(") + nar_str(b"name")
_NODE = nar_str(b"node")
_CLOSE = nar_str(b")")
_CLOSE_ENTRY = _CLOSE + _CLOSE  # the node's ")" then the entry's ")"


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
            raise NixFormatError(f"file '{display_path(path)}' shrank while it was being dumped")
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
            raise RuntimeError(f"the NAR of {display_path(self._path)} has not been fully iterated yet")
        return self._result

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a NarDumper can be iterated only once")
        self._started = True
        return self._generate()

    def _generate(self) -> Iterator[bytes]:
        out = self._out = _Chunker(self._chunk_size)
        out.add(MAGIC)
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
            prefix = _ENTRY + nar_str(name) + _NODE
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
            raise NixFormatError(f"'{display_path(path)}' is nested more than {MAX_DEPTH} levels deep")
        closer = _CLOSE_ENTRY if prefix else _CLOSE
        key = decode_name(name) if parent is not None else ""
        if kind == "regular":
            fd = os.open(path, _OPEN_FLAGS)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise NixFormatError(f"file '{display_path(path)}' changed type while it was being dumped")
                size = st.st_size
                executable = bool(st.st_mode & stat.S_IXUSR)
                head = prefix + (_EXECUTABLE if executable else _REGULAR) + nar_u64(size)
                if parent is not None:
                    offset = out.offset + len(head)
                    parent[key] = regular_node(size, executable=executable, nar_offset=offset)
                if size <= _SMALL_FILE and size < out.chunk_size - out.pending:  # one piece, no generator
                    data = _read_exact(fd, size, path) if size else b""
                    out.add(head + data + PADDING[size % 8] + closer)
                else:
                    out.add(head)
                    yield from self._contents(fd, size, path)
                    out.add(PADDING[size % 8] + closer)
            finally:
                os.close(fd)
        elif kind == "symlink":
            target = os.readlink(path)  # noqa: PTH115 -- raw bytes; pathlib has no bytes paths
            out.add(prefix + _SYMLINK + nar_str(target) + closer)
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
    raise NixFormatError(f"file '{display_path(path)}' has an unsupported type (mode {stat.filemode(mode)})")


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
