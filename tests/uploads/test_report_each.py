"""uploads/report.py's ``_each``: when one object's check fails, the others stop (issue 18). Before, the report
failed and its other checks ran on, competing for the pool and S3 with the report the client sent next."""

from __future__ import annotations

import asyncio

import pytest

from niks3d.errors import StorageError
from niks3d.uploads.report import _CONCURRENCY, _each


def test_the_first_failure_cancels_the_other_checks_and_is_raised() -> None:
    started: list[int] = []
    finished: list[int] = []

    async def check(i: int) -> int:
        started.append(i)
        if i == 3:
            await asyncio.sleep(0)
            raise StorageError("HEAD failed")
        await asyncio.sleep(3600)
        finished.append(i)
        return i

    async def run() -> None:
        with pytest.raises(StorageError, match="HEAD failed"):
            await asyncio.wait_for(_each(list(range(100)), check), 60)
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]  # nothing left running

    asyncio.run(run())
    assert finished == []
    # bounded: the failed one's slot may pass to one more before the cancellation; the rest never started
    assert len(started) <= _CONCURRENCY + 1


def test_results_come_in_the_order_of_the_items() -> None:
    async def check(i: int) -> int:
        await asyncio.sleep((i % 3) / 1000)
        return i * 2

    assert asyncio.run(_each(list(range(50)), check)) == [i * 2 for i in range(50)]
