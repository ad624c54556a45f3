"""Every bucket key this cache stores, parsed and built strictly (docs/protocol.md 4.7, 7).

The keys go into S3 requests, SQL rows and log lines, so a key is accepted only if it has exactly one of these
shapes, and generic checks (no traversal, no encoding tricks, no control characters) run first::

    nix-cache-info
    <hash>.narinfo                                  hash_part = <hash>
    <hash>.ls                                       hash_part = <hash>
    nar/<nix32 52>.nar[.zst|.xz|.bz2|.br|.lz4|.lzip]
    log/<hash>-<name>.drv                           hash_part = the derivation's hash
    realisations/sha256:<hex64>!<output>.doi        (Nix 2.8 to 2.34)
    build-trace-v2/<hash>-<name>.drv/<output>.doi   hash_part = the derivation's hash (Nix 2.35+)

``hash_part`` is the 32-character store path hash the key belongs to, or None for keys that belong to no store
path by name (``nix-cache-info``, NARs, and old-layout realisations, whose id is a derivation hash modulo).
"""

from __future__ import annotations

__all__ = [
    "COMPRESSION_EXTENSIONS",
    "CONTENT_TYPES",
    "STAGING_PREFIX",
    "BucketKey",
    "BucketKind",
    "build_trace_key",
    "log_key",
    "ls_key",
    "nar_key",
    "narinfo_key",
    "parse_bucket_key",
    "realisation_key",
    "staging_key",
    "staging_session",
]

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from niks3d.nix import nix32
from niks3d.nix.errors import InvalidBucketKey, InvalidHash, InvalidRealisation, InvalidStorePath, quote
from niks3d.nix.realisation import parse_realisation_id
from niks3d.nix.storepath import StorePath, validate_hash_part, validate_name

BucketKind = Literal["nix-cache-info", "narinfo", "nar", "ls", "log", "realisation"]

# Compression name (narinfo ``Compression``) -> NAR file extension, as Nix names uploads (docs/protocol.md 4.6).
COMPRESSION_EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {
        "none": "",
        "gzip": "",
        "xz": ".xz",
        "bzip2": ".bz2",
        "zstd": ".zst",
        "lzip": ".lzip",
        "lz4": ".lz4",
        "br": ".br",
    }
)
# kind -> the Content-Type of what is stored under that kind of key (docs/protocol.md 4.7): the uploads'
# presigned PUTs, the objects niks3d writes, and the read proxy's answers all take it from here.
CONTENT_TYPES: Mapping[BucketKind, str] = MappingProxyType(
    {
        "nix-cache-info": "text/x-nix-cache-info",
        "narinfo": "text/x-nix-narinfo",
        "nar": "application/x-nix-nar",
        "ls": "application/json",
        "log": "text/plain; charset=utf-8",
        "realisation": "application/json",
    }
)
# The longest valid key is a build-trace-v2 one: 15 + 244 + 1 + 211 + 4 = 475 characters.
MAX_KEY_LEN = 512

_NAR_RE = re.compile(r"nar/([0-9a-df-np-sv-z]{52})\.nar(\.zst|\.xz|\.bz2|\.br|\.lz4|\.lzip)?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _generic_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"must be a string, got {type(key).__name__}"
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_LEN:
        return f"is {len(key)} characters long, the limit is {MAX_KEY_LEN}"
    if "\0" in key:
        return "contains a NUL character"
    control = _CONTROL_RE.search(key)
    if control:
        return f"contains the control character {control[0]!r}"
    if not key.isascii():
        return "contains non-ASCII characters"
    if "\\" in key:
        return "contains a backslash"
    if "%" in key:
        return "contains '%': percent-encoded keys are refused (decode the request path exactly once)"
    if key.startswith("/"):
        return "starts with '/': keys are relative to the bucket root"
    segments = key.split("/")
    if ".." in segments:
        return "contains a '..' segment"
    if "." in segments:
        return "contains a '.' segment"
    if "" in segments:
        return "contains an empty segment ('//' or a trailing '/')"
    return None


def _nar_problem(key: str) -> str | None:
    if _NAR_RE.fullmatch(key):
        return None
    rest = key[len("nar/") :]
    if "/" in rest:
        return "a NAR key has no further '/' after 'nar/'"
    digest, dot, ext = rest.partition(".")
    if len(digest) != 52:
        return f"a NAR key needs a 52-character nix32 file hash, found {len(digest)} characters"
    bad = next((ch for ch in digest if ch not in nix32.ALPHABET), None)
    if bad is not None:
        return f"the NAR file hash contains {bad!r}, which is not a nix32 character"
    return f"a NAR key ends in '.nar' plus an optional .zst/.xz/.bz2/.br/.lz4/.lzip, not {dot + ext!r}"


def _derivation(basename: str) -> StorePath:
    path = StorePath.from_basename(basename)
    if not path.is_derivation:
        raise InvalidStorePath(f"{basename!r} is not a derivation (its name does not end in '.drv')")
    return path


def _classify(key: str) -> tuple[BucketKind, str | None]:
    """Return the kind and hash part of ``key``, or raise InvalidBucketKey with the specific reason."""
    problem = _generic_problem(key)
    if problem:
        raise InvalidBucketKey(f"bucket key {quote(key)} {problem}")
    try:
        if key == "nix-cache-info":
            return "nix-cache-info", None
        if "/" not in key:
            stem, dot, suffix = key.rpartition(".")
            if dot and suffix in ("narinfo", "ls"):
                kind: BucketKind = "narinfo" if suffix == "narinfo" else "ls"
                return kind, validate_hash_part(stem)
            raise InvalidBucketKey("a key without '/' must be 'nix-cache-info', '<hash>.narinfo' or '<hash>.ls'")
        prefix, _, rest = key.partition("/")
        if prefix == "nar":
            problem = _nar_problem(key)
            if problem:
                raise InvalidBucketKey(problem)
            return "nar", None
        if prefix == "log":
            return "log", _derivation(rest).hash
        if prefix == "realisations":
            if not rest.endswith(".doi") or "/" in rest:
                raise InvalidBucketKey("a realisation key is 'realisations/sha256:<hex64>!<output>.doi'")
            parse_realisation_id(rest[: -len(".doi")])
            return "realisation", None
        if prefix == "build-trace-v2":
            drv, slash, output = rest.partition("/")
            if not slash or "/" in output or not output.endswith(".doi"):
                raise InvalidBucketKey("a build trace key is 'build-trace-v2/<drv basename>/<output>.doi'")
            validate_name(output[: -len(".doi")], "output name")
            return "realisation", _derivation(drv).hash
        raise InvalidBucketKey(
            f"the prefix {prefix!r} is unknown; expected nar/, log/, realisations/ or build-trace-v2/"
        )
    except (InvalidBucketKey, InvalidStorePath, InvalidRealisation) as exc:
        raise InvalidBucketKey(f"bucket key {quote(key)}: {exc}") from None


@dataclass(frozen=True, slots=True)
class BucketKey:
    """A validated bucket key: its ``kind``, the ``key`` itself and the store ``hash_part`` it belongs to.

    Construction checks that ``kind`` and ``hash_part`` are what :func:`parse_bucket_key` finds in ``key``.
    """

    kind: BucketKind
    key: str
    hash_part: str | None

    def __post_init__(self) -> None:
        found = _classify(self.key)
        if found != (self.kind, self.hash_part):
            raise InvalidBucketKey(
                f"bucket key {quote(self.key)} is of kind {found[0]!r} with hash part {found[1]!r}, "
                f"not {self.kind!r} with {self.hash_part!r}"
            )

    def __str__(self) -> str:
        return self.key


def parse_bucket_key(key: str) -> BucketKey:
    """Classify and validate ``key``; raises InvalidBucketKey saying exactly what is wrong."""
    kind, hash_part = _classify(key)
    return BucketKey(kind, key, hash_part)


def narinfo_key(hash_part: str) -> str:
    """``<hash>.narinfo`` for a store path hash part."""
    return parse_bucket_key(f"{validate_hash_part(hash_part)}.narinfo").key


def ls_key(hash_part: str) -> str:
    """``<hash>.ls`` (the NAR listing) for a store path hash part."""
    return parse_bucket_key(f"{validate_hash_part(hash_part)}.ls").key


def nar_key(nar_hash: bytes, compression: str = "zstd") -> str:
    """``nar/<nix32(nar_hash)>.nar<ext>``, with Nix's extension for ``compression`` (none for ``none``)."""
    if not isinstance(nar_hash, bytes) or len(nar_hash) != 32:
        raise InvalidHash("a NAR key needs a 32-byte sha256 digest")
    extension = COMPRESSION_EXTENSIONS.get(compression)
    if extension is None:
        raise InvalidBucketKey(
            f"unknown compression {quote(compression)}; expected one of {', '.join(COMPRESSION_EXTENSIONS)}"
        )
    return parse_bucket_key(f"nar/{nix32.encode(nar_hash)}.nar{extension}").key


def log_key(drv_basename: str) -> str:
    """``log/<drv basename>`` for a derivation's basename (``<hash>-<name>.drv``)."""
    return parse_bucket_key(f"log/{_derivation(drv_basename).basename}").key


def realisation_key(realisation_id: str) -> str:
    """``realisations/<id>.doi`` for an id ``sha256:<hex64>!<output>`` (the Nix 2.8 to 2.34 layout)."""
    parse_realisation_id(realisation_id)
    return parse_bucket_key(f"realisations/{realisation_id}.doi").key


def build_trace_key(drv_basename: str, output_name: str) -> str:
    """``build-trace-v2/<drv basename>/<output>.doi`` (the Nix 2.35+ realisation layout)."""
    drv = _derivation(drv_basename).basename
    return parse_bucket_key(f"build-trace-v2/{drv}/{validate_name(output_name, 'output name')}.doi").key


# Uploads land under a per-session staging key, never under the key they are published as; niks3d copies them
# into place after its checks (docs/security.md, rule 2). Staging keys are no cache keys: Nix never reads them.
STAGING_PREFIX = "staging/"
_STAGING_RE = re.compile(r"staging/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/(.+)")


def staging_key(session_id: str, key: str) -> str:
    """Where session ``session_id`` (a UUID string) uploads the object to be published as ``key``."""
    parse_bucket_key(key)
    if not _STAGING_RE.fullmatch(f"{STAGING_PREFIX}{session_id}/x"):
        raise InvalidBucketKey(f"{quote(session_id)} is not a session id")
    return f"{STAGING_PREFIX}{session_id}/{key}"


def staging_session(key: str) -> str | None:
    """The session id of a staging key, or None if ``key`` is not one."""
    match = _STAGING_RE.fullmatch(key)
    return match.group(1) if match else None
