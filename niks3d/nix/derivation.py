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

__all__ = [
    "MAX_DERIVATION_BYTES",
    "Derivation",
    "InvalidDerivation",
    "Output",
    "parse_derivation",
    "text_store_path",
]

import hashlib
from dataclasses import dataclass

from niks3d.nix import nix32
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import STORE_DIR, StorePath

MAX_DERIVATION_BYTES = 1024 * 1024


class InvalidDerivation(NixFormatError):
    """A .drv file that is not the ATerm Nix writes."""


@dataclass(frozen=True, slots=True)
class Output:
    path: str  # "" for a floating content-addressed output
    hash_algo: str  # "r:sha256", "sha256", ... for content-addressed outputs, else ""
    hash: str  # base16, for fixed outputs; else ""


@dataclass(frozen=True, slots=True)
class Derivation:
    outputs: dict[str, str]  # output name -> path ("" for a floating content-addressed output)
    input_drvs: tuple[str, ...]
    input_srcs: tuple[str, ...]
    # The rest of the ATerm, in the file's order, for the hash modulo (niks3d/nix/drvhash.py).
    output_specs: tuple[tuple[str, Output], ...] = ()
    input_outputs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (input drv path, its output names)
    system: str = ""
    builder: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def references(self) -> list[str]:
        """The .drv file's references: its input sources and input derivations, sorted."""
        return sorted({*self.input_drvs, *self.input_srcs})

    @property
    def floating_outputs(self) -> list[str]:
        """The names of the outputs whose path is known only once built (floating content-addressed)."""
        return [name for name, out in self.output_specs if not out.path and out.hash_algo and not out.hash]


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
    specs: list[tuple[str, Output]] = []
    while not r.peek(b"]"):
        if specs:
            r.expect(b",")
        r.expect(b"(")
        name = r.string()
        r.expect(b",")
        path = r.string()
        r.expect(b",")
        algo = r.string()  # hash algorithm (content-addressed outputs)
        r.expect(b",")
        digest = r.string()  # hash (fixed outputs)
        r.expect(b")")
        specs.append((name, Output(path, algo, digest)))
    outputs = {name: out.path for name, out in specs}
    r.expect(b"],[")
    inputs: list[tuple[str, tuple[str, ...]]] = []
    while not r.peek(b"]"):
        if inputs:
            r.expect(b",")
        r.expect(b"(")
        input_drv = r.string()
        r.expect(b",")
        if r.peek(b"["):
            inputs.append((input_drv, tuple(r.strings())))
        else:  # Nix 2.19+ dynamic-derivation form: ([outputs],[(name,[...])...]) - only its paths matter
            raise InvalidDerivation("dynamic derivation inputs are not supported")
        r.expect(b")")
    input_drvs = [drv for drv, _ in inputs]
    r.expect(b"],")
    input_srcs = r.strings()
    r.expect(b",")
    system = r.string()
    r.expect(b",")
    builder = r.string()
    r.expect(b",")
    args = r.strings()
    r.expect(b",[")
    env: list[tuple[str, str]] = []
    while not r.peek(b"]"):
        if env:
            r.expect(b",")
        r.expect(b"(")
        key = r.string()
        r.expect(b",")
        env.append((key, r.string()))
        r.expect(b")")
    r.expect(b"])")
    if r.pos != len(data):
        raise InvalidDerivation(f"{len(data) - r.pos} bytes after the end of the derivation")
    if not outputs:
        raise InvalidDerivation("the derivation has no outputs")
    if len(outputs) != len(specs) or len(set(input_drvs)) != len(input_drvs):
        raise InvalidDerivation("the derivation names an output or an input derivation twice")
    for path in [*input_drvs, *input_srcs, *(p for p in outputs.values() if p)]:
        try:
            StorePath.parse(path)
        except NixFormatError as exc:
            raise InvalidDerivation(f"the derivation names an invalid store path: {exc}") from None
    return Derivation(
        outputs=outputs,
        input_drvs=tuple(input_drvs),
        input_srcs=tuple(input_srcs),
        output_specs=tuple(specs),
        input_outputs=tuple(inputs),
        system=system,
        builder=builder,
        args=tuple(args),
        env=tuple(env),
    )


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
