"""Reporting uploaded objects to the server early and in batches, so that a push's progress is durable.

Once the server has accepted a report (``POST /sessions/{id}/objects``), a push that is killed and started
again gets that object as "present" and does not upload it again. Reports are sent when ``batch`` of them
have piled up or ``interval`` seconds have passed; whatever is not yet accepted goes with ``complete``.
A report that fails to send is kept for the next try (reports are idempotent).

One request carries at most ``MAX_REPORT`` objects; more pending go in turn. The server copies and checks every
object of a report before it answers, so a report of thousands (everything that piled up while one was on its
way) ran for minutes on a loaded machine: past a proxy's read timeout (nginx's 60 s), and then sent again in
full, with more, while the server was still working on the first (issue 18).
"""

from __future__ import annotations

__all__ = ["MAX_REPORT", "ObjectReport", "Reporter"]

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from niks3d.client.api import ApiClient, SessionClosed
from niks3d.errors import ClientError

logger = logging.getLogger(__name__)

ObjectReport = dict[str, Any]
MAX_REPORT = 256


class Reporter:
    """Collects object reports of one session and sends them in batches."""

    def __init__(self, api: ApiClient, session_id: str, *, batch: int = 32, interval: float = 2.0) -> None:
        self.api = api
        self.session_id = session_id
        self.batch = batch
        self.interval = interval
        self._pending: dict[str, ObjectReport] = {}
        self.accepted: set[str] = set()
        self.missing: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, key: str, file_size: int, file_hash: str | None = None, *, urgent: bool = False) -> None:
        """Queue the report of an uploaded object; ``urgent`` sends it at once (a large NAR is worth it)."""
        report: ObjectReport = {"file_size": file_size}
        if file_hash is not None:
            report["file_hash"] = file_hash
        self._pending[key] = report
        self.accepted.discard(key)
        if urgent or len(self._pending) >= self.batch:
            self._wake.set()

    @property
    def pending(self) -> dict[str, ObjectReport]:
        """Reports not yet accepted by the server (a copy)."""
        return dict(self._pending)

    async def flush(self) -> None:
        """Send every pending report now, ``MAX_REPORT`` per request. Raises :class:`SessionClosed`; other
        failures stay pending."""
        async with self._lock:
            sent: set[str] = set()
            while True:
                batch = dict(itertools.islice(((k, v) for k, v in self._pending.items() if k not in sent), MAX_REPORT))
                if not batch or not await self._send(batch):
                    return
                sent.update(batch)

    async def _send(self, batch: dict[str, ObjectReport]) -> bool:
        """One report request; False when it failed (its reports stay pending)."""
        try:
            answer = await self.api.report_objects(self.session_id, batch)
        except SessionClosed:
            raise
        except ClientError as exc:
            logger.warning("could not report %d uploaded objects yet (%s); will retry", len(batch), exc)
            return False
        for key in answer.accepted:
            if self._pending.get(key) == batch.get(key):
                self._pending.pop(key, None)
            self.accepted.add(key)
        for item in answer.missing:
            self.missing[item.key] = item.reason
            logger.warning("the server did not find %s after upload: %s", item.key, item.reason)
            if self._pending.get(item.key) == batch.get(item.key):
                self._pending.pop(item.key, None)
        return True

    async def _loop(self) -> None:
        while True:
            # Not asyncio.wait_for: on Python 3.11 it returns normally when it is cancelled just as the event is
            # set (an urgent report, then stop()), swallowing the cancellation, and stop() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        """Start sending reports in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self, *, wait: bool = True) -> None:
        """Stop the background sender (pending reports stay pending); re-raises a SessionClosed it met.

        With ``wait``, a report already on its way is let finish first. Cancelling it would not stop the server
        from checking it, and the same objects would be reported again at once (by :meth:`flush` or with
        ``complete``), so that two requests completed the same multipart upload at the same time.
        """
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            task.result()
            return
        current = asyncio.current_task()
        cancels = current.cancelling() if current is not None else 0  # > 0 when stopping after an interruption
        if wait:
            async with self._lock:  # flush holds it while a report is on its way
                task.cancel()
        else:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling() > cancels:
                raise  # the caller itself was cancelled meanwhile, not only the loop
