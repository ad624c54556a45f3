"""Errors of the pure Nix protocol code (nix32, hashes, store paths, bucket keys, narinfo, NAR, signing).

Everything here derives from :class:`NixFormatError`, a ``ValueError``, because :mod:`niks3d.nix` imports
nothing else from niks3d; the server maps these to 4xx answers. Each message names the thing that is wrong::

    NixFormatError (ValueError)
    ├── InvalidNix32          not a nix32 string of the expected length
    ├── InvalidHash           not a sha256 hash in any form Nix accepts
    ├── InvalidStorePath      not a valid store path, basename or hash part
    ├── InvalidBucketKey      not a key this cache stores (or an unsafe one)
    ├── InvalidNarInfo        a narinfo Nix would refuse (``line``, ``field``)
    ├── InvalidNar            a NAR that is malformed or not canonical (``offset``)
    ├── InvalidSigningKey     a secret or public key file/line that is malformed
    ├── InvalidSignature      a ``name:base64`` signature line that is malformed
    └── InvalidRealisation    a CA realisation id or ``.doi`` body that is malformed
"""

from __future__ import annotations

__all__ = [
    "InvalidBucketKey",
    "InvalidHash",
    "InvalidNar",
    "InvalidNarInfo",
    "InvalidNix32",
    "InvalidRealisation",
    "InvalidSignature",
    "InvalidSigningKey",
    "InvalidStorePath",
    "NixFormatError",
    "quote",
]

_QUOTE_LIMIT = 120


def quote(value: object) -> str:
    """``repr(value)`` cut to a readable length, for naming untrusted input in an error message."""
    text = repr(value)
    if len(text) <= _QUOTE_LIMIT:
        return text
    size = f" ({len(value)} chars)" if isinstance(value, str | bytes) else ""
    return f"{text[: _QUOTE_LIMIT - 20]}...{text[-12:]}{size}"


class NixFormatError(ValueError):
    """Base of every error raised by the pure protocol code in :mod:`niks3d.nix`."""


class InvalidNix32(NixFormatError):
    """A string is not valid nix32 (wrong length, a character outside the alphabet, stray high bits)."""


class InvalidHash(NixFormatError):
    """A hash is not a sha256 in any of the forms Nix accepts."""


class InvalidStorePath(NixFormatError):
    """A store path, store path basename or hash part is invalid."""


class InvalidBucketKey(NixFormatError):
    """A bucket key is not one this cache stores, or is unsafe (traversal, encoding, control characters)."""


class InvalidNarInfo(NixFormatError):
    """A narinfo Nix would refuse; ``line`` (1-based) and ``field`` say where, when known."""

    def __init__(self, reason: str, *, line: int | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.line = line
        self.field = field
        if line is not None and field is not None:
            where = f"narinfo line {line} ({field})"
        elif line is not None:
            where = f"narinfo line {line}"
        elif field is not None:
            where = f"narinfo field {field}"
        else:
            where = "narinfo"
        super().__init__(f"{where}: {reason}")


class InvalidNar(NixFormatError):
    """A NAR is malformed or not canonical; ``offset`` is the byte offset where the problem was found."""

    def __init__(self, reason: str, *, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        where = f"NAR at byte {offset}" if offset is not None else "NAR"
        super().__init__(f"{where}: {reason}")


class InvalidSigningKey(NixFormatError):
    """A secret or public signing key is malformed (format, length, or seed/public mismatch)."""


class InvalidSignature(NixFormatError):
    """A signature line is not ``name:base64(64 bytes)``."""


class InvalidRealisation(NixFormatError):
    """A CA-derivation realisation id or ``.doi`` body is malformed."""
