"""Synthetic closures for the push benchmarks, registered in a Nix store without building anything.

A closure is written as a ``nix-store --export`` stream (what ``nix-store --import`` reads: for each path a NAR,
then its store path, references and deriver) and imported, so 10,000 paths take seconds instead of the minutes
10,000 derivation builds would, and the same stream imported into two stores (the host's Nix 2.8 and the
modern-Nix chroot's) gives both the very same paths and bytes. ``nix-store --import`` takes the references as
given and checks no signature, which is what a bench needs; the paths are input-addressed with made-up hash parts.

Shape: path ``i`` references ``2i+1`` and ``2i+2`` (a binary tree: path 0 is the root) and lists them in a file
``refs`` as a build would. Contents:

* ``mixed``: ``n`` paths of about ``nar_bytes`` in all, sizes spread like packages (a few big, many small), each
  half random bytes (``blob``, incompressible) and half text (``doc.txt``, words: compresses about 3x with zstd);
* ``small``: ``n`` paths of one small text file (0.5 to 4 KiB) each.
"""

from __future__ import annotations

__all__ = ["Closure", "export_stream", "import_closure", "mixed_closure", "small_closure"]

import itertools
import random
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from niks3d.nix import nix32

_EXPORT_MAGIC = 0x4558494E  # "NIXE": what follows a NAR in an export stream


@dataclass(frozen=True)
class SynthPath:
    path: str
    files: tuple[tuple[str, bytes], ...]  # (name, contents), sorted by name
    references: tuple[str, ...]


@dataclass(frozen=True)
class Closure:
    """The paths of a synthetic closure, root first."""

    paths: list[SynthPath]

    @property
    def root(self) -> str:
        return self.paths[0].path

    @property
    def store_paths(self) -> list[str]:
        return [p.path for p in self.paths]


def _num(n: int) -> bytes:
    return struct.pack("<Q", n)


def _str(data: bytes) -> bytes:
    return _num(len(data)) + data + b"\0" * (-len(data) % 8)


def _nar(files: Sequence[tuple[str, bytes]]) -> Iterator[bytes]:
    """The NAR of a directory holding ``files`` (regular, not executable; names sorted)."""
    yield b"".join(_str(t) for t in (b"nix-archive-1", b"(", b"type", b"directory"))
    for name, contents in files:
        yield b"".join(_str(t) for t in (b"entry", b"(", b"name", name.encode(), b"node", b"("))
        yield b"".join(_str(t) for t in (b"type", b"regular", b"contents"))
        yield _num(len(contents))
        yield contents
        yield b"\0" * (-len(contents) % 8)
        yield _str(b")") + _str(b")")
    yield _str(b")")


def nar_size(path: SynthPath) -> int:
    return sum(map(len, _nar(path.files)))


def export_stream(closure: Closure) -> Iterator[bytes]:
    """The ``nix-store --export`` stream of ``closure``, references before their referrers."""
    for path in reversed(closure.paths):
        yield _num(1)
        yield from _nar(path.files)
        refs = b"".join(_str(r.encode()) for r in path.references)
        yield _num(_EXPORT_MAGIC) + _str(path.path.encode()) + _num(len(path.references)) + refs
        yield _str(b"") + _num(0)  # no deriver, no signature
    yield _num(0)


def _tree(n: int, name: str, rng: random.Random, contents: Sequence[list[tuple[str, bytes]]]) -> Closure:
    names = [f"/nix/store/{nix32.encode(rng.randbytes(20))}-{name}-{i}" for i in range(n)]
    paths = []
    for i in range(n):
        children = tuple(names[c] for c in (2 * i + 1, 2 * i + 2) if c < n)
        files = [*contents[i], ("refs", "".join(f"{c}\n" for c in children).encode())]
        paths.append(SynthPath(names[i], tuple(sorted(files)), tuple(sorted(children))))
    return Closure(paths)


class _Words:
    """Pseudo-English: words of a fixed vocabulary, Zipf-like frequencies, lines of about 70 characters."""

    def __init__(self, rng: random.Random) -> None:
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        self.rng = rng
        self.vocabulary = [
            "".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(2, 10))) for _ in range(20_000)
        ]
        self.cum_weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(self.vocabulary))))

    def text(self, size: int) -> bytes:
        out: list[str] = []
        length = 0
        while length < size:
            words = self.rng.choices(self.vocabulary, cum_weights=self.cum_weights, k=12)
            line = " ".join(words) + ".\n"
            out.append(line)
            length += len(line)
        return "".join(out).encode()[:size]


def mixed_closure(n: int, nar_bytes: int, *, seed: int) -> Closure:
    """``n`` paths of about ``nar_bytes`` of NAR in all, half random and half text (see the module doc)."""
    rng = random.Random(seed)  # reproducible bench data, nothing secret
    shares = [min(rng.paretovariate(1.2), 40.0) for _ in range(n)]  # the biggest ~40x the smallest
    scale = nar_bytes / sum(shares)
    words = _Words(rng)
    contents = []
    for share in shares:
        size = max(256, int(share * scale))
        contents.append([("blob", rng.randbytes(size // 2)), ("doc.txt", words.text(size - size // 2))])
    return _tree(n, "pushcost", rng, contents)


def small_closure(n: int, *, seed: int) -> Closure:
    """``n`` paths of one small text file each."""
    rng = random.Random(seed)  # reproducible bench data, nothing secret
    words = _Words(rng)
    return _tree(n, "pushsmall", rng, [[("doc.txt", words.text(rng.randint(512, 4096)))] for _ in range(n)])


def import_closure(closure: Closure, argv: Sequence[str] = ("nix-store", "--import")) -> None:
    """Register ``closure`` in a store with ``argv`` (the host's ``nix-store --import`` by default; the chroot's
    for the modern-Nix store), streaming the export into its stdin."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for piece in export_stream(closure):
            proc.stdin.write(piece)
    finally:
        proc.stdin.close()
    stderr = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr.decode(errors='replace')[-3000:]}")


def total_nar_size(closure: Closure) -> int:
    return sum(nar_size(p) for p in closure.paths)


def write_export(closure: Closure, target: Path) -> None:
    with target.open("wb") as out:
        for piece in export_stream(closure):
            out.write(piece)
