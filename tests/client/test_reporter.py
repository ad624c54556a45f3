"""The client's reports go in requests of at most MAX_REPORT objects (issue 18): the server checks every object
of a report before it answers, and a report of everything that piled up ran past a proxy's read timeout."""

from __future__ import annotations

import asyncio
from typing import Any

from niks3d.client.api import ReportAnswer
from niks3d.client.reporter import MAX_REPORT, Reporter
from niks3d.errors import ClientError


class FakeApi:
    """Accepts every report, except the ones numbered in ``fail`` (1-based), which fail as a 503 would."""

    def __init__(self, fail: set[int] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def report_objects(self, session_id: str, reports: dict[str, Any]) -> ReportAnswer:
        self.batches.append(list(reports))
        if len(self.batches) in self.fail:
            raise ClientError("POST .../objects failed with HTTP 503")
        return ReportAnswer.model_validate({"accepted": list(reports), "missing": []})


def _reporter(api: FakeApi, n: int) -> Reporter:
    reporter = Reporter(api, "s", interval=3600)  # type: ignore[arg-type]
    for i in range(n):
        reporter.add(f"nar/{i:04d}.nar.zst", 10)
    return reporter


def test_a_flush_sends_its_reports_in_bounded_requests() -> None:
    api = FakeApi()
    reporter = _reporter(api, 2 * MAX_REPORT + 3)
    asyncio.run(reporter.flush())
    assert [len(b) for b in api.batches] == [MAX_REPORT, MAX_REPORT, 3]
    assert reporter.pending == {}
    assert len(reporter.accepted) == 2 * MAX_REPORT + 3


def test_a_failed_request_keeps_its_reports_and_the_rest_for_the_next_flush() -> None:
    api = FakeApi(fail={2})
    reporter = _reporter(api, 3 * MAX_REPORT)
    asyncio.run(reporter.flush())
    assert [len(b) for b in api.batches] == [MAX_REPORT, MAX_REPORT]  # it stops at the failure
    assert len(reporter.pending) == 2 * MAX_REPORT
    asyncio.run(reporter.flush())
    assert [len(b) for b in api.batches[2:]] == [MAX_REPORT, MAX_REPORT]
    assert reporter.pending == {}
