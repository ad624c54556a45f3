"""Store derivations (``.drv`` files): just enough of them to prove that a derivation produced a store path.

A ``.drv`` is an ATerm, ``Derive([outputs],[input drvs],[input sources],system,builder,[args],[env])``, and its
own store path is a *text* path (docs/security.md, rule 3):

    fingerprint = "text" + ":" + r for each reference r (sorted) + ":sha256:" + hex(sha256(file))
                  + ":/nix/store:" + name
    hash part   = nix32(fold sha256(fingerprint) by XOR into 20 bytes)

where the references are the input sources and the input derivations' paths. So whoever holds the file can be
checked against the path it claims to be, and its outputs name the paths it builds (input-addressed and
fixed-output derivations; floating content-addressed outputs are empty until built).
"""

from __future__ import annotations

__all__ = ["MAX_DERIVATION_BYTES", "Derivation", "InvalidDerivation", "parse_derivation", "text_store_path"]

import hashlib
from dataclasses import dataclass

from niks3d.nix import nix32
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import STORE_DIR, StorePath

MAX_DERIVATION_BYTES = 1024 * 1024


class InvalidDerivation(NixFormatError):
    """A .drv file that is not the ATerm Nix writes."""


@dataclass(frozen=True, slots=True)
class Derivation:
    outputs: dict[str, str]  # output name -> path ("" for a floating content-addressed output)
    input_drvs: tuple[str, ...]
    input_srcs: tuple[str, ...]

    def references(self) -> list[str]:
        """The .drv file's references: its input sources and input derivations, sorted."""
        return sorted({*self.input_drvs, *self.input_srcs})


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            raise InvalidDerivation(f"expected {token.decode()!r} at byte {self.pos} of the derivation")
        self.pos += len(token)

    def peek(self, token: bytes) -> bool:
        return self.data.startswith(token, self.pos)

    def string(self) -> str:
        self.expect(b'"')
        out = bytearray()
        escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}
        while True:
            if self.pos >= len(self.data):
                raise InvalidDerivation("unterminated string in the derivation")
            c = self.data[self.pos]
            self.pos += 1
            if c == ord('"'):
                return out.decode("utf-8", errors="surrogateescape")
            if c == ord("\\"):
                if self.pos >= len(self.data):
                    raise InvalidDerivation("unterminated string in the derivation")
                e = self.data[self.pos]
                self.pos += 1
                out += escapes.get(e, bytes([e]))
            else:
                out.append(c)

    def strings(self) -> list[str]:
        self.expect(b"[")
        items: list[str] = []
        while not self.peek(b"]"):
            if items:
                self.expect(b",")
            items.append(self.string())
        self.expect(b"]")
        return items


def parse_derivation(data: bytes) -> Derivation:
    """The outputs and inputs of a ``.drv`` file's contents; raises :class:`InvalidDerivation`."""
    if len(data) > MAX_DERIVATION_BYTES:
        raise InvalidDerivation(f"the derivation has {len(data)} bytes, more than {MAX_DERIVATION_BYTES}")
    r = _Reader(data)
    r.expect(b"Derive([")
    outputs: dict[str, str] = {}
    while not r.peek(b"]"):
        if outputs:
            r.expect(b",")
        r.expect(b"(")
        name = r.string()
        r.expect(b",")
        path = r.string()
        r.expect(b",")
        r.string()  # hash algorithm (fixed outputs)
        r.expect(b",")
        r.string()  # hash
        r.expect(b")")
        outputs[name] = path
    r.expect(b"],[")
    input_drvs: list[str] = []
    while not r.peek(b"]"):
        if input_drvs:
            r.expect(b",")
        r.expect(b"(")
        input_drvs.append(r.string())
        r.expect(b",")
        if r.peek(b"["):
            r.strings()
        else:  # Nix 2.19+ dynamic-derivation form: ([outputs],[(name,[...])...]) - only its paths matter
            raise InvalidDerivation("dynamic derivation inputs are not supported")
        r.expect(b")")
    r.expect(b"],")
    input_srcs = r.strings()
    r.expect(b",")
    r.string()  # system
    r.expect(b",")
    r.string()  # builder
    r.expect(b",")
    r.strings()  # args
    r.expect(b",[")
    first = True
    while not r.peek(b"]"):
        if not first:
            r.expect(b",")
        first = False
        r.expect(b"(")
        r.string()
        r.expect(b",")
        r.string()
        r.expect(b")")
    r.expect(b"])")
    if r.pos != len(data):
        raise InvalidDerivation(f"{len(data) - r.pos} bytes after the end of the derivation")
    if not outputs:
        raise InvalidDerivation("the derivation has no outputs")
    for path in [*input_drvs, *input_srcs, *(p for p in outputs.values() if p)]:
        try:
            StorePath.parse(path)
        except NixFormatError as exc:
            raise InvalidDerivation(f"the derivation names an invalid store path: {exc}") from None
    return Derivation(outputs=outputs, input_drvs=tuple(input_drvs), input_srcs=tuple(input_srcs))


def text_store_path(name: str, contents: bytes, references: list[str]) -> StorePath:
    """The store path of a text file (``builtins.toFile``, every ``.drv``) with these contents and references."""
    fingerprint = ":".join(
        ["text", *sorted(references), "sha256", hashlib.sha256(contents).hexdigest(), STORE_DIR, name]
    )
    digest = hashlib.sha256(fingerprint.encode()).digest()
    folded = bytearray(20)
    for i, byte in enumerate(digest):
        folded[i % 20] ^= byte
    return StorePath(nix32.encode(bytes(folded)), name)
