"""SHA-256 hashes in the textual forms Nix reads and writes (docs/protocol.md 1.4).

Nix accepts ``sha256:`` followed by nix32 (52 chars), base16 (64) or base64 (44), and SRI ``sha256-<base64>``;
the length decides the base. Nix always writes ``sha256:<nix32>``, and so do we.
"""

from __future__ import annotations

__all__ = ["SHA256_LEN", "format_sha256", "parse_sha256", "to_sri"]

import base64
import binascii
import re

from niks3d.nix import nix32
from niks3d.nix.errors import InvalidHash, InvalidNix32, quote

SHA256_LEN = 32
_NIX32_LEN = nix32.encoded_length(SHA256_LEN)  # 52
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]{43}=")


def _decode_base64(body: str, text: str) -> bytes:
    if not _BASE64_RE.fullmatch(body):
        raise InvalidHash(f"invalid sha256 hash {quote(text)}: not 44 characters of padded base64")
    try:
        digest = base64.b64decode(body, validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex admits only valid base64
        raise InvalidHash(f"invalid sha256 hash {quote(text)}: {exc}") from None
    if base64.b64encode(digest).decode("ascii") != body:
        raise InvalidHash(f"invalid sha256 hash {quote(text)}: non-canonical base64 (stray bits before '=')")
    return digest


def parse_sha256(text: str) -> bytes:
    """Parse a SHA-256 hash in any form Nix accepts and return the 32-byte digest.

    Accepted: ``sha256:<nix32 52>``, ``sha256:<base16 64>``, ``sha256:<base64 44>`` and SRI
    ``sha256-<base64 44>``. Anything else (another algorithm, no prefix, a wrong length, stray characters)
    raises :class:`InvalidHash`.
    """
    if not isinstance(text, str):
        raise InvalidHash(f"hash must be a string, got {type(text).__name__}")
    if text.startswith("sha256-"):
        return _decode_base64(text[len("sha256-") :], text)
    if not text.startswith("sha256:"):
        algo = re.match(r"([A-Za-z0-9]+)[:-]", text)
        if algo:
            raise InvalidHash(f"invalid hash {quote(text)}: algorithm {algo[1]!r} is not supported, only sha256")
        raise InvalidHash(f"invalid hash {quote(text)}: expected 'sha256:<hash>' or SRI 'sha256-<base64>'")
    body = text[len("sha256:") :]
    if len(body) == _NIX32_LEN:
        try:
            return nix32.decode(body, SHA256_LEN)
        except InvalidNix32 as exc:
            raise InvalidHash(f"invalid sha256 hash {quote(text)}: {exc}") from None
    if len(body) == 2 * SHA256_LEN:
        if not _HEX_RE.fullmatch(body):
            raise InvalidHash(f"invalid sha256 hash {quote(text)}: 64 characters but not base16")
        return bytes.fromhex(body)
    if len(body) == 44:
        return _decode_base64(body, text)
    raise InvalidHash(
        f"invalid sha256 hash {quote(text)}: length {len(body)} after 'sha256:' is none of 52 (nix32), "
        "64 (base16) or 44 (base64)"
    )


def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != SHA256_LEN:
        got = f"{len(digest)} bytes" if isinstance(digest, bytes) else type(digest).__name__
        raise InvalidHash(f"a sha256 digest is {SHA256_LEN} bytes, got {got}")


def format_sha256(digest: bytes) -> str:
    """Render a digest as Nix writes it: ``sha256:<nix32>``."""
    _check_digest(digest)
    return "sha256:" + nix32.encode(digest)


def to_sri(digest: bytes) -> str:
    """Render a digest as SRI: ``sha256-<base64>`` (the form of ``narHash`` in ``nix path-info --json``)."""
    _check_digest(digest)
    return "sha256-" + base64.b64encode(digest).decode("ascii")
