"""Parsing ``.ls`` listings as any Nix writes them (docs/security.md, rule 8): the forms of Nix 2.8, 2.26 and 2.35
give the same canonical bytes, and every malformed listing is refused with a reason."""

from __future__ import annotations

import pytest

from niks3d.nix.errors import NixFormatError
from niks3d.nix.listing import parse_listing, render_listing

# The same store path's listing, as Nix 2.8 wrote it and as Debian 13's Nix 2.26 wrote it (keys sorted), both
# captured with `nix copy --to file://...?write-nar-listing=1`.
NIX_2_8 = (
    b'{"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":2,"narOffset":232},'
    b'"bin":{"type":"directory","entries":{"hi":{"type":"regular","size":18,"executable":true,"narOffset":592}}},'
    b'"empty":{"type":"regular","size":0,"narOffset":832},"l":{"type":"symlink","target":"a"}}}}'
)
NIX_2_26 = (
    b'{"root":{"entries":{"a":{"narOffset":232,"size":2,"type":"regular"},"bin":{"entries":{"hi":{"executable":true,'
    b'"narOffset":592,"size":18,"type":"regular"}},"type":"directory"},"empty":{"narOffset":832,"size":0,'
    b'"type":"regular"},"l":{"target":"a","type":"symlink"}},"type":"directory"},"version":1}'
)


def test_every_nix_versions_form_gives_the_same_canonical_bytes() -> None:
    assert render_listing(parse_listing(NIX_2_8)) == NIX_2_8
    assert render_listing(parse_listing(NIX_2_26)) == NIX_2_8
    # 2.35 writes "executable":false on every regular file
    assert render_listing(parse_listing(NIX_2_8.replace(b'"size":2,', b'"size":2,"executable":false,'))) == NIX_2_8


def test_a_listing_that_says_something_else_renders_differently() -> None:
    assert render_listing(parse_listing(NIX_2_8.replace(b'"size":18', b'"size":19'))) != NIX_2_8
    assert render_listing(parse_listing(NIX_2_8.replace(b'"executable":true,', b""))) != NIX_2_8


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"null", "must be a JSON object"),
        (b'{"root":{"type":"regular","size":1}}', "version must be 1"),
        (b'{"version":true,"root":{"type":"regular","size":1}}', "version must be 1"),
        (b'{"version":1}', "has no root"),
        (b'{"version":1,"root":{"type":"regular","size":1},"x":1}', "unknown field(s) x"),
        (b'{"version":1,"root":{"type":"regular"}}', "non-negative integer size"),
        (b'{"version":1,"root":{"type":"regular","size":1.5}}', "non-negative integer size"),
        (b'{"version":1,"root":{"type":"regular","size":1,"narOffset":-8}}', "non-negative integer narOffset"),
        (b'{"version":1,"root":{"type":"regular","size":1,"executable":1}}', "non-boolean executable"),
        (b'{"version":1,"root":{"type":"regular","size":1,"mode":1}}', "unknown field(s) mode"),
        (b'{"version":1,"root":{"type":"symlink","target":""}}', "non-empty string target"),
        (b'{"version":1,"root":{"type":"directory","entries":[]}}', "object of entries"),
        (b'{"version":1,"root":{"type":"directory","entries":{"..":{"type":"regular","size":1}}}}', "invalid entry"),
        (b'{"version":1,"root":' + b'{"type":"directory","entries":{"d":' * 64 + b"{}" + b"}}" * 64 + b"}", "nested"),
        (b"[" * 100_000, "nested"),
    ],
)
def test_a_malformed_listing_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(NixFormatError, match=r"^listing: ") as caught:
        parse_listing(body)
    assert reason in str(caught.value)
