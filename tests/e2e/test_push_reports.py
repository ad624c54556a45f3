"""Every uploaded object is reported once: the server checks (and, for a multipart upload, completes) it once;
and the reporter always stops.

A report still on its way when the uploads end is let finish rather than cancelled and sent again; sent twice,
two requests completed the same multipart upload at once, and SeaweedFS, asked for the parts of an upload that
another request was completing, answered with none, so the NAR was reported missing and the push failed.

The last two tests drive :class:`~niks3d.client.reporter.Reporter` alone, with a stand-in for the API (they
belong with the client's unit tests): stopping it right after an urgent report hung the push for good on
Python 3.11, whose ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited event is set.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import pytest

from niks3d.client.models import ReportAnswer
from niks3d.client.reporter import Reporter
from testkit.nixfixtures import build_expr
from tests.client.storekit import delete
from tests.e2e.test_push import _push

PUSHES = 4


@pytest.mark.nix
@pytest.mark.postgres
@pytest.mark.s3
def test_each_multipart_upload_is_completed_once(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()  # multipart from 8 MiB, 5 MiB parts
    salt = secrets.token_hex(6)
    members = " ".join(
        f'(derivation {{ name = "reported-{i}"; salt = "{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; echo a log line; '
        f'head -c 12582912 /dev/urandom > $out" ]; }})'
        for i in range(PUSHES)
    )
    paths = build_expr(f"[ {members} ]\n", tmp_path / "build")
    request.addfinalizer(lambda: delete(*paths))
    for path in paths:  # one path per push: its multipart NAR is the last upload, its report the last one
        code, doc, err = _push(daemon, tmp_path, capsys, path)
        assert code == 0, err
        assert doc["published"] == [path]
        assert "did not find" not in err, err
    log = daemon.log()
    # uploads land under the session's staging key (docs/security.md, rule 2)
    completed = re.findall(r"completed multipart upload \S+ of (?:staging/[0-9a-f-]+/)?(nar/\S+)", log)
    assert len(completed) == len(set(completed)) == PUSHES, completed
    assert "completed before" not in log  # a second completion of the same upload found it gone
    assert "no parts to complete" not in log


class _Api:
    """Answers reports like the server, accepting everything; ``gate`` holds a report on its way."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.answered = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.on_its_way = asyncio.Event()

    async def report_objects(self, session_id: str, reports: dict[str, Any]) -> ReportAnswer:
        self.sent.append(dict(reports))
        self.on_its_way.set()
        await self.gate.wait()
        self.answered += 1
        return ReportAnswer(accepted=list(reports))


async def test_the_reporter_stops_right_after_an_urgent_report():
    api = _Api()
    reporter = Reporter(api, "session", interval=3600)  # type: ignore[arg-type]
    reporter.start()
    await asyncio.sleep(0)  # its loop now waits to be woken
    reporter.add("nar/a.nar.zst", 10, urgent=True)
    stopping = asyncio.create_task(reporter.stop())  # on the same tick as the wake-up
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert stopping in done, "stop() hangs: the reporter's loop swallowed its cancellation"
    stopping.result()
    await reporter.flush()
    assert [list(batch) for batch in api.sent] == [["nar/a.nar.zst"]]
    assert reporter.pending == {}


async def test_stopping_the_reporter_lets_a_report_on_its_way_finish_and_sends_it_once():
    api = _Api()
    api.gate.clear()
    reporter = Reporter(api, "session", interval=3600)  # type: ignore[arg-type]
    reporter.start()
    await asyncio.sleep(0)
    reporter.add("nar/b.nar.zst", 10, urgent=True)
    await asyncio.wait_for(api.on_its_way.wait(), 5)
    stopping = asyncio.create_task(reporter.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # it waits for the answer rather than cancelling the request
    api.gate.set()
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert stopping in done
    stopping.result()
    await reporter.flush()  # nothing left to send
    assert len(api.sent) == 1 and api.answered == 1
    assert reporter.pending == {} and reporter.accepted == {"nar/b.nar.zst"}
