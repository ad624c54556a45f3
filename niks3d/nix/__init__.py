"""The Nix binary cache protocol, pure: nix32, hashes, store paths, bucket keys, narinfo, NAR, signing.

Nothing here does network or database I/O, and nothing imports the rest of niks3d; every malformed input
raises a :class:`NixFormatError` subclass whose message names the thing that is wrong.
"""

from __future__ import annotations

__all__ = [
    "STORE_DIR",
    "BucketKey",
    "InvalidBucketKey",
    "InvalidHash",
    "InvalidNar",
    "InvalidNarInfo",
    "InvalidNix32",
    "InvalidRealisation",
    "InvalidSignature",
    "InvalidSigningKey",
    "InvalidStorePath",
    "NarDumper",
    "NarInfo",
    "NarResult",
    "NarValidator",
    "NixFormatError",
    "PublicKey",
    "Realisation",
    "SecretKey",
    "StorePath",
    "build_trace_key",
    "dump_path",
    "fingerprint",
    "format_sha256",
    "log_key",
    "ls_key",
    "nar_key",
    "narinfo_key",
    "nix32",
    "parse_bucket_key",
    "parse_narinfo",
    "parse_realisation",
    "parse_realisation_id",
    "parse_sha256",
    "parse_signature",
    "realisation_key",
    "render_listing",
    "render_nix_cache_info",
    "to_sri",
    "validate_hash_part",
    "validate_nar",
]

from niks3d.nix import nix32
from niks3d.nix.bucketkeys import (
    BucketKey,
    build_trace_key,
    log_key,
    ls_key,
    nar_key,
    narinfo_key,
    parse_bucket_key,
    realisation_key,
)
from niks3d.nix.errors import (
    InvalidBucketKey,
    InvalidHash,
    InvalidNar,
    InvalidNarInfo,
    InvalidNix32,
    InvalidRealisation,
    InvalidSignature,
    InvalidSigningKey,
    InvalidStorePath,
    NixFormatError,
)
from niks3d.nix.hashes import format_sha256, parse_sha256, to_sri
from niks3d.nix.listing import render_listing
from niks3d.nix.nar import NarResult
from niks3d.nix.nar_dump import NarDumper, dump_path
from niks3d.nix.nar_read import NarValidator, validate_nar
from niks3d.nix.narinfo import NarInfo, parse_narinfo, render_nix_cache_info
from niks3d.nix.realisation import Realisation, parse_realisation, parse_realisation_id
from niks3d.nix.signing import PublicKey, SecretKey, fingerprint, parse_signature
from niks3d.nix.storepath import STORE_DIR, StorePath, validate_hash_part
