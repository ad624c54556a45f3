"""The write-once upload buffer (niks3d/client/spool.py): memory, then a temporary file; read back whole every time."""

from __future__ import annotations

import os

import pytest

from niks3d.client.spool import Spool


async def _read(spool: Spool) -> bytes:
    return b"".join([bytes(chunk) async for chunk in spool.body()])


@pytest.mark.parametrize(
    "pieces",
    [
        [b"whole compressed NAR"],  # one bytes object: kept as it is
        [b"first", bytearray(b" second"), memoryview(b" third"), b" fourth"],
        [bytearray(b"a bytearray first"), b" then bytes"],
        [b"", b"after an empty write", b""],
    ],
    ids=["one-bytes", "mixed", "bytearray-first", "empty-writes"],
)
async def test_what_was_written_is_read_back_whole_every_time(pieces) -> None:
    with Spool(memory_limit=1 << 20) as spool:
        for piece in pieces:
            spool.write(piece)
        expected = b"".join(bytes(p) for p in pieces)
        assert not spool.on_disk
        assert spool.size == len(expected)
        assert await _read(spool) == expected
        assert await _read(spool) == expected  # a retry sends the same bytes from the start
        assert spool.getvalue() == expected


async def test_a_kept_bytes_object_then_more_goes_to_disk_past_the_limit() -> None:
    first, second = os.urandom(3000), os.urandom(3000)
    with Spool(memory_limit=4096) as spool:
        spool.write(first)
        assert not spool.on_disk
        spool.write(second)
        assert spool.on_disk
        assert spool.size == 6000
        assert await _read(spool) == first + second


async def test_a_bytes_object_larger_than_the_limit_goes_to_disk_at_once() -> None:
    data = os.urandom(10_000)
    with Spool(memory_limit=4096) as spool:
        spool.write(data)
        assert spool.on_disk
        assert await _read(spool) == data
