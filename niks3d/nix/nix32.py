"""Nix's own base-32 encoding ("nix32"), used for store path hashes and ``sha256:`` hashes in narinfos.

The alphabet omits ``e``, ``o``, ``t`` and ``u``. The string is the digest read as a little-endian integer,
written in base 32 most significant digit first and zero-padded to ``encoded_length(len(digest))`` digits
(docs/protocol.md 1.5).
"""

from __future__ import annotations

__all__ = ["ALPHABET", "decode", "encode", "encoded_length"]

from niks3d.nix.errors import InvalidNix32, quote

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_DIGIT = {ch: value for value, ch in enumerate(ALPHABET)}


def encoded_length(nbytes: int) -> int:
    """Number of nix32 characters for ``nbytes`` bytes: 52 for SHA-256, 32 for store path hashes."""
    if nbytes < 0:
        raise ValueError(f"byte length must not be negative, got {nbytes}")
    if nbytes == 0:
        return 0
    return (nbytes * 8 - 1) // 5 + 1


def encode(data: bytes) -> str:
    """Encode ``data`` as nix32."""
    value = int.from_bytes(data, "little")
    return "".join(ALPHABET[(value >> (5 * k)) & 31] for k in range(encoded_length(len(data)) - 1, -1, -1))


def decode(text: str, nbytes: int) -> bytes:
    """Decode a nix32 string of exactly ``encoded_length(nbytes)`` characters into ``nbytes`` bytes.

    Raises :class:`InvalidNix32` for a wrong length, a character outside the alphabet, or bits set beyond
    ``nbytes`` bytes (which Nix also refuses).
    """
    if not isinstance(text, str):
        raise InvalidNix32(f"nix32 value must be a string, got {type(text).__name__}")
    want = encoded_length(nbytes)
    if len(text) != want:
        raise InvalidNix32(
            f"invalid nix32 string {quote(text)}: length {len(text)}, expected {want} for {nbytes} bytes"
        )
    value = 0
    for position, ch in enumerate(text):
        digit = _DIGIT.get(ch)
        if digit is None:
            raise InvalidNix32(f"invalid nix32 string {quote(text)}: character {ch!r} at index {position} is not nix32")
        value = (value << 5) | digit
    if value >> (nbytes * 8):
        raise InvalidNix32(f"invalid nix32 string {quote(text)}: it sets bits beyond {nbytes} bytes")
    return value.to_bytes(nbytes, "little")
