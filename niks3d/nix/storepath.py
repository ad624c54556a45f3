"""Store paths (``/nix/store/<hash>-<name>``) validated with the strictest rules Nix has (docs/protocol.md 7).

A store path is ``STORE_DIR/<basename>`` and a basename is ``<hash>-<name>``: 32 nix32 characters, a ``-``
at index 32, then a name of 1 to 211 characters from ``[0-9A-Za-z+-._?=]`` that is not ``.`` or ``..`` and
does not start with ``.-`` or ``..-`` (Nix HEAD's rules). Everything that reaches a bucket key, a SQL row or a
file name passes through here first.
"""

from __future__ import annotations

__all__ = [
    "HASH_LEN",
    "MAX_NAME_LEN",
    "STORE_DIR",
    "StorePath",
    "validate_hash_part",
    "validate_name",
]

import re
from dataclasses import dataclass

from niks3d.nix.errors import InvalidStorePath, quote
from niks3d.nix.nix32 import ALPHABET

STORE_DIR = "/nix/store"
HASH_LEN = 32  # nix32 characters of the 160-bit store path digest
MAX_NAME_LEN = 211
_MAX_BASENAME_LEN = HASH_LEN + 1 + MAX_NAME_LEN

_HASH_CHARS = frozenset(ALPHABET)
_NAME_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+-._?=")
# The rules again as regular expressions (docs/protocol.md 7): every value must also match them, as a backstop.
_HASH_RE = re.compile(r"[0-9a-df-np-sv-z]{32}")
_NAME_RE = re.compile(r"(?!\.\.?(?:-|\Z))[0-9A-Za-z+\-._?=]{1,211}")


def _text_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if "\0" in value:
        return "contains a NUL character"
    if "\n" in value or "\r" in value:
        return "contains a line break"
    return None


def _hash_problem(value: str) -> str | None:
    if len(value) != HASH_LEN:
        return f"the hash part has {len(value)} characters, expected {HASH_LEN}"
    for position, ch in enumerate(value):
        if ch not in _HASH_CHARS:
            return f"the hash part has {ch!r} at index {position}, which is not a nix32 character"
    return None if _HASH_RE.fullmatch(value) else "the hash part is not nix32"


def _name_problem(value: str) -> str | None:
    if not value:
        return "the name is empty"
    if len(value) > MAX_NAME_LEN:
        return f"the name is {len(value)} characters long, the limit is {MAX_NAME_LEN}"
    for ch in value:
        if ch not in _NAME_CHARS:
            return f"the name contains {ch!r}; allowed are letters, digits and + - . _ ? ="
    if value in (".", ".."):
        return f"the name must not be {value!r}"
    if value.startswith((".-", "..-")):
        return "the name must not start with '.-' or '..-'"
    return None if _NAME_RE.fullmatch(value) else "the name is invalid"


def _basename_problem(value: str) -> str | None:
    if "/" in value:
        return "the basename contains '/'"
    if len(value) > _MAX_BASENAME_LEN:
        return f"the basename is {len(value)} characters long, the limit is {_MAX_BASENAME_LEN}"
    if len(value) < HASH_LEN + 2:
        return "the basename is too short for '<32-character hash>-<name>'"
    if value[HASH_LEN] != "-":
        return f"the basename must have '-' at index {HASH_LEN}, found {value[HASH_LEN]!r}"
    return _hash_problem(value[:HASH_LEN]) or _name_problem(value[HASH_LEN + 1 :])


def validate_hash_part(value: str) -> str:
    """Return ``value`` if it is a store path hash part (32 nix32 characters), else raise InvalidStorePath."""
    problem = _text_problem(value) or _hash_problem(value)
    if problem:
        raise InvalidStorePath(f"store path hash {quote(value)}: {problem}")
    return value


def validate_name(value: str, what: str = "store path name") -> str:
    """Return ``value`` if it is a valid store path name (Nix HEAD rules), else raise InvalidStorePath.

    Derivation output names follow the same rules; ``what`` names the thing in the error message.
    """
    problem = _text_problem(value) or _name_problem(value)
    if problem:
        raise InvalidStorePath(f"{what} {quote(value)}: {problem}")
    return value


@dataclass(frozen=True, slots=True)
class StorePath:
    """A validated store path: ``hash`` (32 nix32 characters) and ``name``; construction validates both."""

    hash: str
    name: str

    def __post_init__(self) -> None:
        validate_hash_part(self.hash)
        validate_name(self.name)

    @property
    def basename(self) -> str:
        """``<hash>-<name>``, the form used in References, Deriver and bucket keys."""
        return f"{self.hash}-{self.name}"

    @property
    def path(self) -> str:
        """The full path, ``/nix/store/<hash>-<name>``."""
        return f"{STORE_DIR}/{self.hash}-{self.name}"

    @property
    def is_derivation(self) -> bool:
        """Whether this is a store derivation (its name ends in ``.drv``)."""
        return self.name.endswith(".drv")

    def __str__(self) -> str:
        return self.path

    @classmethod
    def from_basename(cls, basename: str) -> StorePath:
        """Parse ``<hash>-<name>``; raises InvalidStorePath naming what is wrong."""
        problem = _text_problem(basename) or _basename_problem(basename)
        if problem:
            raise InvalidStorePath(f"store path basename {quote(basename)}: {problem}")
        return cls(basename[:HASH_LEN], basename[HASH_LEN + 1 :])

    @classmethod
    def parse(cls, full_path: str) -> StorePath:
        """Parse a full store path ``/nix/store/<hash>-<name>`` (directly inside the store, nothing after)."""
        prefix = STORE_DIR + "/"
        problem = _text_problem(full_path)
        if problem is None and not full_path.startswith(prefix):
            problem = f"is not inside {STORE_DIR}"
        problem = problem or _basename_problem(full_path[len(prefix) :])
        if problem:
            raise InvalidStorePath(f"store path {quote(full_path)}: {problem}")
        return cls(full_path[len(prefix) : len(prefix) + HASH_LEN], full_path[len(prefix) + HASH_LEN + 1 :])
