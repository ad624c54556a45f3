"""Ed25519 signing keys and narinfo signatures in Nix's formats (docs/protocol.md 3).

A secret key is ``name:base64(seed || public)`` (64 bytes, as ``nix key generate-secret`` prints it), a public
key ``name:base64(32 bytes)``, a signature ``name:base64(64 bytes)``. Signatures cover the fingerprint
``1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<sorted full reference paths, comma-joined>``.
"""

from __future__ import annotations

__all__ = ["PublicKey", "SecretKey", "fingerprint", "parse_signature", "sign_replacing"]

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from niks3d.nix.errors import (
    InvalidHash,
    InvalidNarInfo,
    InvalidSignature,
    InvalidSigningKey,
    InvalidStorePath,
    quote,
)
from niks3d.nix.hashes import format_sha256
from niks3d.nix.storepath import StorePath

_SEED_LEN = 32
_PUBLIC_LEN = 32
_SECRET_LEN = _SEED_LEN + _PUBLIC_LEN
_SIGNATURE_LEN = 64


def _name_problem(name: str) -> str | None:
    if not name:
        return "the key name before ':' is empty"
    for ch in name:
        if ch.isspace() or not ch.isprintable() or not ch.isascii():
            return f"the key name {quote(name)} contains {ch!r}"
    return None


class _Malformed(Exception):
    """Why a ``name:base64`` text is malformed, phrased without echoing the text (it may be a secret)."""


def _split_colon_base64(text: str) -> tuple[str, bytes]:
    """Split ``name:base64`` at the first ':' and decode the rest strictly; raises _Malformed."""
    if not isinstance(text, str):
        raise _Malformed(f"expected a string, got {type(text).__name__}")
    if "\r" in text:
        raise _Malformed("it contains a carriage return")
    if "\0" in text:
        raise _Malformed("it contains a NUL character")
    name, colon, encoded = text.partition(":")
    if not colon:
        raise _Malformed("there is no ':' between the key name and the base64 data")
    problem = _name_problem(name)
    if problem:
        raise _Malformed(problem)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("the part after ':' is not valid base64") from None
    return name, raw


def parse_signature(line: str) -> tuple[str, bytes]:
    """Parse a ``name:base64`` signature into ``(key name, 64-byte signature)``; raises InvalidSignature."""
    try:
        name, raw = _split_colon_base64(line)
    except _Malformed as exc:
        raise InvalidSignature(f"signature {quote(line)} is malformed: {exc}") from None
    if len(raw) != _SIGNATURE_LEN:
        raise InvalidSignature(
            f"signature {quote(line)} decodes to {len(raw)} bytes, an Ed25519 signature is {_SIGNATURE_LEN}"
        )
    return name, raw


def _strip_key_file_text(text: str, what: str) -> str:
    """Tolerate the trailing newline(s) a key file may end with, as Nix does; nothing else."""
    if not isinstance(text, str):
        raise InvalidSigningKey(f"{what} must be a string, got {type(text).__name__}")
    stripped = text.rstrip("\n")
    if "\n" in stripped:
        raise InvalidSigningKey(f"{what} spans several lines; expected one 'name:base64' line")
    return stripped


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with the name signatures refer to it by."""

    name: str
    key: bytes

    def __post_init__(self) -> None:
        problem = _name_problem(self.name) if isinstance(self.name, str) else "the key name is not a string"
        if problem:
            raise InvalidSigningKey(f"public key: {problem}")
        if not isinstance(self.key, bytes) or len(self.key) != _PUBLIC_LEN:
            raise InvalidSigningKey(f"public key {self.name!r} is not valid: expected {_PUBLIC_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``name:base64(32 bytes)`` (a trailing newline is tolerated)."""
        stripped = _strip_key_file_text(text, "public key")
        try:
            name, raw = _split_colon_base64(stripped)
        except _Malformed as exc:
            raise InvalidSigningKey(f"public key {quote(stripped)} is not valid: {exc}") from None
        if len(raw) != _PUBLIC_LEN:
            raise InvalidSigningKey(
                f"public key {name!r} is not valid: it decodes to {len(raw)} bytes, expected {_PUBLIC_LEN}"
            )
        return cls(name, raw)

    def to_text(self) -> str:
        """``name:base64``, as ``nix key convert-secret-to-public`` prints it."""
        return f"{self.name}:{base64.b64encode(self.key).decode('ascii')}"

    def verify(self, sig_line: str, message: bytes) -> bool:
        """Whether ``sig_line`` is a valid signature of ``message`` by this key (and names this key).

        A signature by another key name is simply not valid (False); a malformed line raises InvalidSignature.
        """
        name, raw = parse_signature(sig_line)
        if name != self.name:
            return False
        try:
            nacl.signing.VerifyKey(self.key).verify(message, raw)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    """An Ed25519 signing key: ``name`` and the 64-byte libsodium secret (seed followed by public key)."""

    name: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        problem = _name_problem(self.name) if isinstance(self.name, str) else "the key name is not a string"
        if problem:
            raise InvalidSigningKey(f"secret key: {problem}")
        if not isinstance(self.secret, bytes) or len(self.secret) != _SECRET_LEN:
            raise InvalidSigningKey(f"secret key {self.name!r} is not valid: expected {_SECRET_LEN} bytes")
        derived = bytes(nacl.signing.SigningKey(self.secret[:_SEED_LEN]).verify_key)
        if derived != self.secret[_SEED_LEN:]:
            raise InvalidSigningKey(f"secret key {self.name!r} is not valid: its public half does not match its seed")

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        """Parse ``name:base64(64 bytes)`` (``nix key generate-secret`` output; a final newline is ok)."""
        stripped = _strip_key_file_text(text, "secret key")
        try:
            name, raw = _split_colon_base64(stripped)
        except _Malformed as exc:
            # Never echo secret material into an error message.
            raise InvalidSigningKey(f"secret key is not valid: {exc}") from None
        if len(raw) != _SECRET_LEN:
            raise InvalidSigningKey(
                f"secret key {name!r} is not valid: it decodes to {len(raw)} bytes, expected {_SECRET_LEN}"
            )
        return cls(name, raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SecretKey:
        """Read and parse a secret key file; errors name the file."""
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSigningKey(f"cannot read secret key file {os.fspath(path)!r}: {exc}") from None
        try:
            return cls.parse(text)
        except InvalidSigningKey as exc:
            raise InvalidSigningKey(f"secret key file {os.fspath(path)!r}: {exc}") from None

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        """A fresh random key named ``name``."""
        signing_key = nacl.signing.SigningKey.generate()
        return cls(name, bytes(signing_key) + bytes(signing_key.verify_key))

    def to_text(self) -> str:
        """``name:base64(64 bytes)`` with no trailing newline, as ``nix key generate-secret`` prints it."""
        return f"{self.name}:{base64.b64encode(self.secret).decode('ascii')}"

    def public_key(self) -> PublicKey:
        """The public half, under the same name."""
        return PublicKey(self.name, self.secret[_SEED_LEN:])

    def sign(self, message: bytes) -> str:
        """Sign ``message`` (a fingerprint) and return ``name:base64(signature)``."""
        signature = nacl.signing.SigningKey(self.secret[:_SEED_LEN]).sign(message).signature
        return f"{self.name}:{base64.b64encode(signature).decode('ascii')}"


def sign_replacing(sigs: Iterable[str], keys: Iterable[SecretKey], message: bytes) -> tuple[str, ...]:
    """``sigs`` plus a signature of ``message`` by each key, replacing older ones under the same key names."""
    new = {key.name: key.sign(message) for key in keys}
    kept = [sig for sig in sigs if parse_signature(sig)[0] not in new]
    return tuple(sorted({*kept, *new.values()}))


def _reference_path(reference: str) -> str:
    try:
        if isinstance(reference, str) and reference.startswith("/"):
            return StorePath.parse(reference).path
        return StorePath.from_basename(reference).path
    except InvalidStorePath as exc:
        raise InvalidStorePath(f"reference: {exc}") from None


def fingerprint(store_path: str, nar_hash: bytes, nar_size: int, references: Iterable[str]) -> bytes:
    """The bytes Nix signs for a store path: ``1;<path>;sha256:<nix32>;<size>;<refs>`` (docs/protocol.md 3.1).

    ``references`` may be basenames or full paths; they are de-duplicated, sorted and joined as full paths.
    """
    path = StorePath.parse(store_path).path
    if not isinstance(nar_hash, bytes) or len(nar_hash) != 32:
        raise InvalidHash(f"NarHash for the fingerprint of {path} must be a 32-byte sha256 digest")
    if isinstance(nar_size, bool) or not isinstance(nar_size, int) or nar_size <= 0:
        raise InvalidNarInfo(
            f"cannot compute the fingerprint of {path}: NarSize must be a positive integer, got {nar_size!r}",
            field="NarSize",
        )
    if isinstance(references, str):
        raise InvalidStorePath("references must be an iterable of store paths, not one string")
    refs = ",".join(sorted({_reference_path(reference) for reference in references}))
    return f"1;{path};{format_sha256(nar_hash)};{nar_size};{refs}".encode("ascii")
