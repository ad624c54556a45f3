"""The public surface of niks3d.nix is pinned: changing it is a deliberate act that shows up here."""

from __future__ import annotations

import niks3d.nix

EXPECTED = [
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


def test_nix_package_exports_exactly_the_pinned_names():
    assert niks3d.nix.__all__ == EXPECTED


def test_every_exported_name_exists():
    missing = [name for name in niks3d.nix.__all__ if not hasattr(niks3d.nix, name)]
    assert missing == []


def test_every_error_derives_from_nix_format_error_and_value_error():
    errors = [getattr(niks3d.nix, name) for name in EXPECTED if name.startswith("Invalid")]
    assert len(errors) == 9
    for error in errors:
        assert issubclass(error, niks3d.nix.NixFormatError)
        assert issubclass(error, ValueError)
