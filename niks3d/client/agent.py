"""``niks3 agent``: drains the upload queue into the cache, one push session per batch (docs/client.md).

A round claims a batch (:meth:`Queue.claim`), drops what can never be pushed (not a valid store path, or no
longer in the local store: garbage-collected since it was queued), pushes the rest as the roots of one
``niks3 push`` (:func:`niks3d.client.push.push`, with everything it does: one session, resume, hash checks,
logs, realisations), and deletes the batch's entries only after the server answered ``complete``.

When a push fails, the agent asks the server for ``/info`` once: if that fails too, the server or the network
is down, and the same batch is tried again after an exponential back-off (capped at ``max_backoff``), for as
long as it takes, or ``retry_for`` seconds with ``--once``. Otherwise the failure belongs to the batch; it is
released with the error, and its paths are tried again alone, later (:mod:`niks3d.client.queue`). A refused
token stops ``--once`` at once; the long-running agent says so and keeps trying, slowly, so that a fixed token
file is picked up without a restart.

Under systemd (``$NOTIFY_SOCKET``) it sends ``READY=1`` once the queue is open, ``STATUS=`` with the queue length
after every change, and ``STOPPING=1`` on SIGTERM; its log lines carry event names and counts, which become
journald fields (:mod:`niks3d.logsetup`). Only one agent drains a queue at a time (a ``flock`` on
``<queue>.lock``).
"""

from __future__ import annotations

__all__ = ["Agent", "AgentOptions", "AgentResult"]

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import aiohttp

from niks3d.client.api import ApiClient
from niks3d.client.pipeline import PipelineSettings
from niks3d.client.progress import Progress
from niks3d.client.push import PushOptions, push
from niks3d.client.queue import Queue
from niks3d.client.store import LocalStore
from niks3d.client.storescan import StoreScan
from niks3d.errors import AuthError, ClientError, Niks3Error
from niks3d.logsetup import log_event
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath
from niks3d.systemd import Notifier

logger = logging.getLogger("niks3d.client.agent")

_AUTH_BACKOFF = 300.0
_SCAN_KEY = "scan_cursor:"


@dataclass(frozen=True)
class AgentOptions:
    """How the agent drains its queue."""

    queue_path: str
    store: LocalStore
    once: bool = False
    batch_size: int = 100
    max_attempts: int = 5
    poll: float = 1.0  # seconds between looks at an idle queue
    min_backoff: float = 1.0
    max_backoff: float = 60.0
    retry_for: float | None = None  # with once: give up after this long without reaching the server
    scan_store: bool = False
    scan_since: float | None = None
    logs: bool = True
    realisations: bool = True
    settings: PipelineSettings = field(default_factory=PipelineSettings)


@dataclass
class AgentResult:
    """What a run of the agent did."""

    published: int = 0  # store paths the server published or already had, counted as queued roots
    batches: int = 0
    dropped: int = 0
    failed: int = 0
    waiting: int = 0
    gave_up: str | None = None


@contextlib.contextmanager
def _exclusive(queue_path: str) -> Iterator[None]:
    lock = f"{queue_path}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClientError(f"cannot open the agent lock {lock}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClientError(f"another niks3 agent is draining {queue_path} (it holds {lock})") from None
        yield
    finally:
        os.close(fd)


class Agent:
    """The uploader of one queue; :meth:`run` drains it once or forever."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        api: ApiClient,
        options: AgentOptions,
        *,
        notifier: Notifier | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.http = http
        self.api = api
        self.options = options
        self.notifier = notifier or Notifier()
        self.stop = stop or asyncio.Event()  # set: finish the current round, then return (niks3 build)
        self.result = AgentResult()
        self._backoff = options.min_backoff
        self._unreachable_since: float | None = None

    # -- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> AgentResult:
        """Drain the queue; with ``once`` (or once ``stop`` is set) return when nothing is due any more."""
        with _exclusive(self.options.queue_path), Queue(self.options.queue_path, create_dir=True) as queue:
            self.notifier.ready()
            self._status(queue, "started")
            log_event(logger, logging.INFO, "agent_started", "draining the upload queue %s", queue.path)
            scan = StoreScan(self.options.store.db_path) if self.options.scan_store else None
            if scan is not None:
                self._init_scan(queue, scan)
            while True:
                if scan is not None:
                    self._scan(queue, scan)
                claimed = queue.claim(self.options.batch_size)
                if claimed is None:
                    if self.options.once or self.stop.is_set():
                        break
                    await self._idle(queue)
                    continue
                if not await self._round(queue, *claimed):
                    break
            self.result.waiting, self.result.failed = queue.counts()
            self._status(queue, "stopped")
        return self.result

    async def _idle(self, queue: Queue) -> None:
        """Wait until another process changed the queue, a delayed entry is due, or ``stop`` is set."""
        version = queue.data_version()
        due = queue.next_due()
        while not self.stop.is_set():
            await self._sleep(self.options.poll)
            if self.options.scan_store or queue.data_version() != version:
                return
            if due is not None and time.time() >= due:
                return

    def _status(self, queue: Queue, what: str) -> None:
        waiting, failed = queue.counts()
        self.notifier.status(f"{waiting} waiting, {failed} failed; {what}")

    # -- one batch ----------------------------------------------------------------------------------------

    def _pushable(self, queue: Queue, paths: list[str]) -> list[StorePath]:
        good: list[StorePath] = []
        gone: list[str] = []
        for text in paths:
            try:
                path = StorePath.parse(text)
            except NixFormatError as exc:
                log_event(logger, logging.WARNING, "agent_dropped", "dropping %r from the queue: %s", text, exc)
                gone.append(text)
                continue
            if not os.path.lexists(self.options.store.real_path(path)):
                log_event(
                    logger,
                    logging.WARNING,
                    "agent_dropped",
                    "dropping %s from the queue: it is no longer in %s (garbage-collected?)",
                    text,
                    self.options.store.describe(),
                )
                gone.append(text)
                continue
            good.append(path)
        if gone:
            queue.drop(gone, "not pushable")
            self.result.dropped += len(gone)
        return good

    async def _round(self, queue: Queue, batch: int, paths: list[str]) -> bool:
        """Push one batch; False when the agent should stop (``--once`` gave up, or a refused token)."""
        roots = self._pushable(queue, paths)
        if not roots:
            queue.finish(batch)
            return True
        options = PushOptions(
            roots=tuple(roots),
            store=self.options.store,
            logs=self.options.logs,
            realisations=self.options.realisations,
            settings=self.options.settings,
        )
        self._status(queue, f"pushing batch {batch} ({len(roots)} paths)")
        try:
            result = await push(self.http, self.api, options, Progress("quiet"))
        except AuthError as exc:
            log_event(logger, logging.ERROR, "agent_auth_refused", "%s; the queue is kept", exc)
            if self.options.once:
                self.result.gave_up = str(exc)
                return False
            await self._sleep(_AUTH_BACKOFF)
            return True
        except Niks3Error as exc:
            return await self._failed(queue, batch, roots, exc)
        done = queue.finish(batch)
        self.result.published += done
        self.result.batches += 1
        self._backoff = self.options.min_backoff
        self._unreachable_since = None
        log_event(
            logger,
            logging.INFO,
            "agent_published",
            "batch %d: %d queued paths pushed (%d paths in the closure, %d uploaded, %d already cached, "
            "%d upstream) in %.1f s",
            batch,
            done,
            result.paths,
            len(result.uploaded),
            len(result.cached),
            len(result.upstream),
            result.seconds,
            batch=batch,
            roots=done,
            paths=result.paths,
            uploaded=len(result.uploaded),
            upstream=len(result.upstream),
            bytes_sent=result.bytes_sent,
        )
        self._status(queue, f"pushed batch {batch}")
        return True

    async def _server_answers(self) -> bool:
        probe = ApiClient(self.http, self.api.config, replace(self.api.policy, attempts=1))
        try:
            await probe.info()
        except Niks3Error:
            return False
        return True

    async def _failed(self, queue: Queue, batch: int, roots: list[StorePath], exc: Niks3Error) -> bool:
        if not await self._server_answers():
            now = time.monotonic()
            if self._unreachable_since is None:
                self._unreachable_since = now
            waited = now - self._unreachable_since
            retry_for = self.options.retry_for
            if (self.options.once or self.stop.is_set()) and retry_for is not None and waited >= retry_for:
                self.result.gave_up = f"the server was unreachable for {waited:.0f} s: {exc}"
                log_event(logger, logging.ERROR, "agent_gave_up", "giving up: %s; the queue is kept", exc)
                return False
            delay = self._backoff
            self._backoff = min(self.options.max_backoff, self._backoff * 2)
            waiting, _failed = queue.counts()
            log_event(
                logger,
                logging.WARNING,
                "agent_unreachable",
                "cannot reach %s (%s); %d paths wait in the queue; trying again in %.0f s",
                self.api.config.server_url,
                exc,
                waiting,
                delay,
                waiting=waiting,
            )
            self._status(queue, f"server unreachable, retrying in {delay:.0f} s")
            if self.stop.is_set():
                await asyncio.sleep(delay)  # draining before exit: back off all the same
            else:
                await self._sleep(delay)
            return True
        attempts = 1 + max((e.attempts for e in queue.entries() if e.batch == batch), default=0)
        delay = min(self.options.max_backoff * 10, self.options.min_backoff * 2**attempts)
        delay *= 0.5 + random.random() / 2  # noqa: S311 -- jitter, not cryptography
        if len(roots) > 1:
            delay = 0.0  # split it at once: each path alone shows which one fails
        queue.release(batch, str(exc), delay=delay, max_attempts=self.options.max_attempts)
        final = len(roots) == 1 and attempts >= self.options.max_attempts
        log_event(
            logger,
            logging.ERROR if final else logging.WARNING,
            "agent_batch_failed",
            "batch %d (%d paths) failed: %s; %s",
            batch,
            len(roots),
            exc,
            f"given up after {attempts} tries (niks3 queue retry)"
            if final
            else (f"tried again in {delay:.0f} s" if len(roots) == 1 else "each path is tried again alone"),
            batch=batch,
            roots=len(roots),
            attempts=attempts,
        )
        self._status(queue, f"batch {batch} failed")
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    # -- the store scan -----------------------------------------------------------------------------------

    def _init_scan(self, queue: Queue, scan: StoreScan) -> None:
        key = _SCAN_KEY + str(scan.db_path)
        if queue.get_meta(key) is None or self.options.scan_since is not None:
            cursor = scan.cursor_at(self.options.scan_since)
            queue.set_meta(key, str(cursor))
            logger.info("scanning %s for new store paths from row %d on", scan.db_path, cursor + 1)

    def _scan(self, queue: Queue, scan: StoreScan) -> None:
        key = _SCAN_KEY + str(scan.db_path)
        cursor = int(queue.get_meta(key) or "0")
        try:
            paths, after = scan.new_paths(cursor)
        except ClientError as exc:
            logger.warning("store scan: %s", exc)
            return
        if after == cursor:
            return
        if paths:
            queue.add(paths, source="scan")
            log_event(logger, logging.INFO, "agent_scanned", "queued %d new store paths", len(paths), paths=len(paths))
        queue.set_meta(key, str(after))
