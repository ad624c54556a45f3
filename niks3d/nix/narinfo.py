"""``.narinfo`` files: parsed as strictly as Nix parses them (or stricter), rendered as Nix writes them.

See docs/protocol.md 2. A narinfo is ``Key: Value`` lines, every line ending in ``\\n``; StorePath, URL, NarHash
and a non-zero NarSize are required. :func:`parse_narinfo` refuses what Nix refuses and what a cache must not
store (CRLF, a missing final newline, duplicate fields, malformed Sig lines, invalid references), naming the
line number and field. :meth:`NarInfo.render` writes the fields in Nix's order with ``sha256:<nix32>`` hashes.
"""

from __future__ import annotations

__all__ = ["NarInfo", "parse_narinfo", "render_nix_cache_info"]

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from niks3d.nix.bucketkeys import COMPRESSION_EXTENSIONS
from niks3d.nix.errors import InvalidNarInfo, NixFormatError, quote
from niks3d.nix.hashes import SHA256_LEN, format_sha256, parse_sha256
from niks3d.nix.signing import SecretKey, fingerprint, parse_signature, sign_replacing
from niks3d.nix.storepath import StorePath

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_SIZE = 2**64 - 1
_CA_RE = re.compile(r"(?:text|fixed(?::r|:git)?):(?:md5|sha1|sha256|sha512):[0-9A-Za-z+/=]+")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_UNKNOWN_DERIVER = "unknown-deriver"
_SINGLE_FIELDS = (
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "CA",
)
_REQUIRED_FIELDS = ("StorePath", "URL", "NarHash", "NarSize")


class _Problem(Exception):
    """A field value is invalid; the message says why, the caller adds the line and field."""


def _wrap(check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except NixFormatError as exc:
        raise _Problem(str(exc)) from None


def _check_token(value: object, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise _Problem(f"{what} {quote(value)} must be non-empty printable ASCII without spaces")
    return value


def _check_digest(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != SHA256_LEN:
        raise _Problem(f"a sha256 digest must be {SHA256_LEN} bytes, got {quote(value)}")
    return value


def _check_size(value: object, *, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
        raise _Problem(f"a size must be an integer from 0 to 2^64-1, got {quote(value)}")
    if positive and value == 0:
        raise _Problem("NarSize must not be 0")
    return value


def _parse_size(text: str, *, positive: bool) -> int:
    if not _SIZE_RE.fullmatch(text):
        raise _Problem(f"{quote(text)} is not a decimal size (digits only, no sign, no leading zeros)")
    return _check_size(int(text), positive=positive)


def _check_basename(value: object) -> str:
    if not isinstance(value, str):
        raise _Problem(f"a reference must be a store path basename string, got {quote(value)}")
    return str(_wrap(StorePath.from_basename, value).basename)


def _check_deriver(value: object) -> str:
    basename = _check_basename(value)
    if not basename.endswith(".drv"):
        raise _Problem(f"the deriver {basename!r} is not a derivation (its name does not end in '.drv')")
    return basename


def _check_sig(value: object) -> str:
    if not isinstance(value, str):
        raise _Problem(f"a signature must be a string, got {quote(value)}")
    _wrap(parse_signature, value)
    return value


def _check_ca(value: object) -> str:
    if not isinstance(value, str) or not _CA_RE.fullmatch(value):
        raise _Problem(f"{quote(value)} is not a content address like 'fixed:r:sha256:<hash>' or 'text:sha256:…'")
    return value


def _check_compression(value: object) -> str:
    if value not in COMPRESSION_EXTENSIONS:
        raise _Problem(f"unknown compression {quote(value)}; expected one of {', '.join(COMPRESSION_EXTENSIONS)}")
    return str(value)


@dataclass(frozen=True)
class NarInfo:
    """The contents of one narinfo. Construction validates every field.

    ``references`` are basenames and ``sigs`` are ``name:base64`` lines; both are stored sorted and unique, as
    Nix keeps them. ``deriver`` is a basename or None. Hashes are raw 32-byte sha256 digests.
    """

    store_path: StorePath
    url: str
    compression: str
    file_hash: bytes | None
    file_size: int | None
    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...] = ()
    deriver: str | None = None
    system: str | None = None
    sigs: tuple[str, ...] = ()
    ca: str | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[str, Callable[[], Any]]] = [
            ("StorePath", self._check_store_path),
            ("URL", lambda: _check_token(self.url, "URL")),
            ("Compression", lambda: _check_compression(self.compression)),
            ("FileHash", lambda: self.file_hash is None or _check_digest(self.file_hash)),
            ("FileSize", lambda: self.file_size is None or _check_size(self.file_size, positive=False)),
            ("NarHash", lambda: _check_digest(self.nar_hash)),
            ("NarSize", lambda: _check_size(self.nar_size, positive=True)),
            ("References", lambda: self._normalise("references", _check_basename)),
            ("Deriver", lambda: self.deriver is None or _check_deriver(self.deriver)),
            ("System", lambda: self.system is None or _check_token(self.system, "System")),
            ("Sig", lambda: self._normalise("sigs", _check_sig)),
            ("CA", lambda: self.ca is None or _check_ca(self.ca)),
        ]
        for field_name, check in checks:
            try:
                check()
            except _Problem as exc:
                raise InvalidNarInfo(str(exc), field=field_name) from None

    def _check_store_path(self) -> None:
        if not isinstance(self.store_path, StorePath):
            raise _Problem(f"store_path must be a StorePath, got {type(self.store_path).__name__}")

    def _normalise(self, attribute: str, check: Callable[[object], str]) -> None:
        values = getattr(self, attribute)
        if isinstance(values, str):
            raise _Problem(f"{attribute} must be a sequence of strings, not one string")
        object.__setattr__(self, attribute, tuple(sorted({check(value) for value in values})))

    def render(self) -> str:
        """The narinfo text in Nix's field order, every line ending in ``\\n`` (docs/protocol.md 2.3)."""
        lines = [
            f"StorePath: {self.store_path.path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            lines.append(f"FileHash: {format_sha256(self.file_hash)}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines.append(f"NarHash: {format_sha256(self.nar_hash)}")
        lines.append(f"NarSize: {self.nar_size}")
        lines.append(f"References: {' '.join(self.references)}")
        if self.deriver is not None:
            lines.append(f"Deriver: {self.deriver}")
        if self.system is not None:
            lines.append(f"System: {self.system}")
        lines.extend(f"Sig: {sig}" for sig in self.sigs)
        if self.ca is not None:
            lines.append(f"CA: {self.ca}")
        return "".join(line + "\n" for line in lines)

    def fingerprint(self) -> bytes:
        """The bytes a signature of this path covers (docs/protocol.md 3.1)."""
        return fingerprint(self.store_path.path, self.nar_hash, self.nar_size, self.references)

    def signed(self, keys: Iterable[SecretKey]) -> NarInfo:
        """A copy signed by every key in ``keys``, replacing earlier signatures by the same key names."""
        return replace(self, sigs=sign_replacing(self.sigs, keys, self.fingerprint()))


def _decode(text: str | bytes) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidNarInfo(f"not valid UTF-8 at byte {exc.start}") from None
    if not isinstance(text, str):
        raise InvalidNarInfo(f"expected text, got {type(text).__name__}")
    return text


def _key_of(line: str) -> str | None:
    key, colon, _ = line.partition(":")
    return key if colon and key else None


def _split_lines(text: str) -> list[tuple[int, str, str]]:
    """Split into ``(line number, key, value)``, refusing anything that is not exactly ``Key: Value\\n``."""
    if not text:
        raise InvalidNarInfo("the narinfo is empty")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise InvalidNarInfo("contains a carriage return (CRLF line endings)", line=number, field=_key_of(line))
    if lines[-1]:
        raise InvalidNarInfo("the last line does not end in a newline", line=len(lines), field=_key_of(lines[-1]))
    entries = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line:
            raise InvalidNarInfo("empty line", line=number)
        key, colon, rest = line.partition(":")
        if not colon:
            raise InvalidNarInfo("no ':' separator between field name and value", line=number)
        if not key:
            raise InvalidNarInfo("empty field name before ':'", line=number)
        if not rest.startswith(" "):
            raise InvalidNarInfo("the ':' must be followed by a space", line=number, field=key)
        control = re.search(r"[\x00-\x08\x0a-\x1f\x7f]", line)
        if control or "\t" in line:
            bad = control[0] if control else "\t"
            raise InvalidNarInfo(f"contains the control character {bad!r}", line=number, field=key)
        entries.append((number, key, rest[1:]))
    return entries


def _parse_references(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    tokens = value.split(" ")
    if "" in tokens:
        raise _Problem("references must be separated by single spaces, with none leading or trailing")
    return tuple(_check_basename(token) for token in tokens)


def parse_narinfo(text: str | bytes, *, expected_hash: str | None = None) -> NarInfo:
    """Parse and validate a narinfo; ``expected_hash`` (the key's hash part) must equal StorePath's hash.

    Raises :class:`InvalidNarInfo` naming the line and field. Unknown fields are ignored, as Nix ignores them.
    """
    fields: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    sigs: list[str] = []
    for number, key, value in _split_lines(_decode(text)):
        if key in first_line and key in _SINGLE_FIELDS:
            raise InvalidNarInfo(f"given twice (first on line {first_line[key]})", line=number, field=key)
        first_line.setdefault(key, number)
        try:
            if key == "StorePath":
                path: StorePath = _wrap(StorePath.parse, value)
                if expected_hash is not None and path.hash != expected_hash:
                    raise _Problem(f"the hash part {path.hash!r} does not match the expected {expected_hash!r}")
                fields["store_path"] = path
            elif key == "URL":
                fields["url"] = _check_token(value, "URL")
            elif key == "Compression":
                # Nix reads an empty or absent Compression as bzip2.
                fields["compression"] = _check_compression(value or "bzip2")
            elif key == "FileHash":
                fields["file_hash"] = _wrap(parse_sha256, value)
            elif key == "FileSize":
                fields["file_size"] = _parse_size(value, positive=False)
            elif key == "NarHash":
                fields["nar_hash"] = _wrap(parse_sha256, value)
            elif key == "NarSize":
                fields["nar_size"] = _parse_size(value, positive=True)
            elif key == "References":
                fields["references"] = _parse_references(value)
            elif key == "Deriver":
                fields["deriver"] = None if value == _UNKNOWN_DERIVER else _check_deriver(value)
            elif key == "System":
                fields["system"] = _check_token(value, "System")
            elif key == "Sig":
                sigs.append(_check_sig(value))
            elif key == "CA":
                fields["ca"] = _check_ca(value)
        except _Problem as exc:
            raise InvalidNarInfo(str(exc), line=number, field=key) from None
    for required in _REQUIRED_FIELDS:
        if required not in first_line:
            raise InvalidNarInfo("the required field is missing", field=required)
    fields.setdefault("compression", "bzip2")
    fields.setdefault("file_hash", None)
    fields.setdefault("file_size", None)
    return NarInfo(sigs=tuple(sigs), **fields)


def render_nix_cache_info(store_dir: str, want_mass_query: bool, priority: int) -> str:
    """The ``nix-cache-info`` file: ``StoreDir``, ``WantMassQuery`` and ``Priority`` (docs/protocol.md 4.1)."""
    if (
        not isinstance(store_dir, str)
        or not re.fullmatch(r"(/[A-Za-z0-9+\-._=]+)+", store_dir)
        or posixpath.normpath(store_dir) != store_dir
    ):
        raise NixFormatError(f"store dir {quote(store_dir)} must be a canonical absolute path")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise NixFormatError(f"nix-cache-info priority must be an integer, got {quote(priority)}")
    return f"StoreDir: {store_dir}\nWantMassQuery: {1 if want_mass_query else 0}\nPriority: {priority}\n"
