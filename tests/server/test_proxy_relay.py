"""The relay's pure pieces: which Range headers are honoured, ETag matching, Accept-Encoding, and a zstd stream
that refuses to end inside a frame."""

from __future__ import annotations

import pytest
import zstandard

from niks3d.server.proxy import _accepts
from niks3d.server.relay import ZstdStream, etag_matches, parse_range, strong_tags


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, None)),
        ("bytes=-500", (-500, None)),
        (" bytes=5-5 ", (5, 5)),
        (None, None),
        ("bytes=-0", None),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("bytes=-", None),
        ("items=0-5", None),
        ("bytes=a-b", None),
        ("bytes=" + "9" * 20 + "-", None),
        ("bytes=\u0661-\u0662", None),
        ("bytes=\uff11-", None),
        ("bytes=0-9999999999999999999", (0, None)),
        ("bytes=7-" + str(5 << 40), (7, None)),
        ("bytes=-9999999999999999999", (-(5 << 40), None)),
    ],
)
def test_one_byte_range_is_honoured_and_anything_else_ignored(header: str | None, expected: object) -> None:
    assert parse_range(header) == expected


def test_etags_match_weakly_and_in_lists() -> None:
    assert etag_matches('"abc"', '"abc"')
    assert etag_matches('W/"abc"', '"abc"')
    assert etag_matches('"x", "abc"', '"abc"')
    assert etag_matches("*", '"abc"')
    assert not etag_matches('"abcd"', '"abc"')


def test_if_none_match_goes_to_s3_with_strong_tags() -> None:
    assert strong_tags('W/"abc"') == '"abc"'
    assert strong_tags(' "x" , W/"abc"') == '"x", "abc"'
    assert strong_tags(" * ") == "*"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("zstd", True),
        ("gzip, zstd", True),
        ("ZSTD;q=0.5", True),
        ("*", True),
        ("zstd;q=0", False),
        ("gzip", False),
        ("", False),
        (None, False),
        ("zstd;q=x", False),
    ],
)
def test_accept_encoding(header: str | None, ok: bool) -> None:
    assert _accepts(header, "zstd") is ok


def test_zstd_streams_decode_across_frames_and_refuse_a_cut() -> None:
    c = zstandard.ZstdCompressor()
    data = c.compress(b"first frame\n") + c.compress(b"second frame\n")
    stream = ZstdStream()
    out = b"".join(stream.feed(data[i : i + 3]) for i in range(0, len(data), 3))
    stream.finish()
    assert out == b"first frame\nsecond frame\n"
    cut = ZstdStream()
    cut.feed(data[:-2])
    with pytest.raises(zstandard.ZstdError):
        cut.finish()
