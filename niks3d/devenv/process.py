"""Child processes that live in context managers: the plumbing under the throwaway PostgreSQL and SeaweedFS.

A :class:`ManagedProcess` is started from an argv list (logged with :func:`shlex.join` first) in its own
session and process group, with stdout and stderr appended to a log file. It is told to die when its parent
dies (``PR_SET_PDEATHSIG``, set in the child after any change of user, and checked against the race where the
parent died before the child could ask). :meth:`ManagedProcess.wait_ready` polls a readiness probe while
checking that the process is still alive; when it has died, the :class:`~niks3d.errors.ServiceError` carries
the tail of its log. :meth:`ManagedProcess.stop` sends the stop signal, waits a bounded time, then kills the
whole process group, and always reaps.

The parent-death signal follows the *thread* that forked the child, so :func:`async_running` forks in the
event loop's thread and only runs the blocking probe and the stop in worker threads.
"""

from __future__ import annotations

__all__ = [
    "ManagedProcess",
    "NotReady",
    "RunAs",
    "ServiceDirectory",
    "async_running",
    "finish_in_thread",
    "free_port",
    "free_ports",
    "running",
]

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from niks3d.errors import ServiceError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 4000
_PORT_TAKEN = "address already in use"


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once, before any fork: the child must not load libraries between fork and exec.
_PRCTL = _load_prctl()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account a child switches to before exec (only when we are root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ServiceError(f"user {name!r} does not exist") from None
        return cls(name, entry.pw_uid, entry.pw_gid)


def _reachable(path: Path, run_as: RunAs) -> bool:
    """Whether ``run_as`` may enter every directory above ``path`` (mode bits only; ACLs are ignored)."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == run_as.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@dataclass(frozen=True)
class ServiceDirectory:
    """Where one service keeps its files.

    ``path`` is the real directory. It is ``base_dir`` itself when that works. When the service runs as
    another user who cannot enter a directory above ``base_dir`` (pytest's ``tmp_path`` lies under a 0700
    directory), or when ``base_dir`` is too long for the Unix sockets inside it, ``path`` is a fresh
    directory under the system temp dir and ``base_dir`` becomes a symlink to it.
    """

    path: Path
    link: Path | None
    created: bool

    @classmethod
    def create(
        cls, base_dir: Path | None, prefix: str, *, run_as: RunAs | None = None, max_length: int | None = None
    ) -> ServiceDirectory:
        owner = run_as if run_as is not None and os.geteuid() == 0 else None
        if base_dir is None:
            directory = cls(cls._fresh(prefix, owner), None, created=True)
        else:
            base_dir = base_dir.absolute()
            in_use = base_dir.exists() and (not base_dir.is_dir() or any(base_dir.iterdir()))
            if base_dir.is_symlink() or in_use:
                raise ServiceError(f"{base_dir} already exists and is not an empty directory")
            too_long = max_length is not None and len(str(base_dir)) > max_length
            base_dir.parent.mkdir(parents=True, exist_ok=True)
            if too_long or (owner is not None and not _reachable(base_dir, owner)):
                if base_dir.exists():
                    base_dir.rmdir()
                real = cls._fresh(prefix, owner)
                base_dir.symlink_to(real, target_is_directory=True)
                logger.info("%s lives in %s (linked from %s)", prefix.rstrip("-"), real, base_dir)
                directory = cls(real, base_dir, created=True)
            else:
                created = not base_dir.exists()
                base_dir.mkdir(mode=0o700, exist_ok=True)
                directory = cls(base_dir, None, created=created)
        if owner is not None:
            os.chown(directory.path, owner.uid, owner.gid)
        return directory

    @staticmethod
    def _fresh(prefix: str, owner: RunAs | None) -> Path:
        for parent in dict.fromkeys([tempfile.gettempdir(), "/tmp"]):  # noqa: S108 - the fallback any user enters
            if owner is None or _reachable(Path(parent, "x"), owner):
                return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        assert owner is not None
        raise ServiceError(f"user {owner.name!r} cannot enter the temp directory {tempfile.gettempdir()}")

    def remove(self) -> None:
        """Delete the directory (only its contents when the caller made it) and the link to it."""
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.is_dir():
            for child in self.path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


class NotReady(Exception):
    """Raised by a readiness probe: the service is not ready yet; the message says why."""


class ManagedProcess:
    """One child process: started in its own process group, logged to a file, stopped and reaped for sure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        run_as: RunAs | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
        death_signal: signal.Signals = signal.SIGKILL,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.run_as = run_as
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.death_signal = death_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ServiceError(f"{self.name} has not been started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def start(self) -> None:
        """Start the process; it runs in its own session and dies with the thread that started it."""
        if self._popen is not None:
            raise ServiceError(f"{self.name} was already started (pid {self._popen.pid})")
        logger.info("starting %s: %s", self.name, shlex.join(self.argv))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
        parent = os.getpid()
        death_signal = int(self.death_signal)

        def in_child() -> None:  # between fork and exec: no imports, no locks, no allocation-heavy work
            if _PRCTL is not None:
                _PRCTL(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)

        switch = self.run_as is not None and os.geteuid() == 0
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=in_child,  # noqa: PLW1509 - only async-signal-safe work, see in_child
                user=self.run_as.uid if switch and self.run_as else None,
                group=self.run_as.gid if switch and self.run_as else None,
                extra_groups=[] if switch else None,
            )
        except OSError as exc:
            self._close_log()
            raise ServiceError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc

    def log_text(self) -> str:
        """What this run wrote to its log so far."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        text = self.log_text()
        return text if len(text) <= limit else "..." + text[-limit:]

    def lost_port_race(self) -> bool:
        """Whether the process died because a port it was given had been taken in the meantime."""
        return self.returncode is not None and _PORT_TAKEN in self.log_text().lower()

    def failure(self, what: str) -> ServiceError:
        """A ServiceError saying ``what`` happened, with the log's path and tail."""
        return ServiceError(f"{self.name} {what} (log {self.log_path}):\n{self.log_tail().rstrip()}")

    def check_alive(self) -> None:
        """Raise a ServiceError with the log tail if the process has exited."""
        code = self.returncode
        if code is not None:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise self.failure(how)

    def _probe(self, probe: Callable[[], None]) -> str | None:
        self.check_alive()
        try:
            probe()
        except NotReady as exc:
            return str(exc)
        return None

    def _not_ready(self, timeout: float, reason: str | None) -> ServiceError:
        return self.failure(f"was not ready within {timeout:g}s (last probe: {reason})")

    def wait_ready(self, probe: Callable[[], None], timeout: float) -> None:
        """Poll ``probe`` (it raises :class:`NotReady`) until it passes, the process dies, or time is up."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while (reason := self._probe(probe)) is not None:
            if time.monotonic() > deadline:
                raise self._not_ready(timeout, reason)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def wait_ready_async(self, probe: Callable[[], None], timeout: float) -> None:  # noqa: ASYNC109 - named in the error
        """:meth:`wait_ready` for asyncio: the probe runs in a worker thread."""
        reason: str | None = "not probed yet"
        delay = 0.02
        try:
            async with asyncio.timeout(timeout):
                while (reason := await asyncio.to_thread(self._probe, probe)) is not None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, 0.25)
        except TimeoutError:
            raise self._not_ready(timeout, reason) from None

    def _exited(self) -> bool:
        """Whether the child has exited, without reaping it: a zombie keeps its process group id ours."""
        assert self._popen is not None
        if self._popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _kill_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit (without reaping); True if it did."""
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> int | None:
        """Stop signal, bounded wait, then SIGKILL to the whole group; reaps. Returns the exit status."""
        popen = self._popen
        if popen is None:
            return None
        if popen.returncode is None:
            if not self._exited():
                logger.info("stopping %s (pid %d) with %s", self.name, popen.pid, self.stop_signal.name)
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(self.stop_signal)
                if not self.wait(self.stop_timeout):
                    logger.warning(
                        "%s (pid %d) did not stop within %.1fs; killing its process group",
                        self.name,
                        popen.pid,
                        self.stop_timeout,
                    )
            # What is left of the group (children of the child) goes too; the unreaped leader holds the id.
            self._kill_group(signal.SIGKILL)
            popen.wait()
        self._close_log()
        return popen.returncode

    def run(self, timeout: float) -> None:
        """Start, wait for exit (killing the group after ``timeout``), and raise with the log if it failed."""
        self.start()
        try:
            if not self.wait(timeout):
                raise self.failure(f"did not finish within {timeout:g}s")
        finally:
            self.stop()
        if self.returncode != 0:
            self.check_alive()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


Launch = Callable[[], tuple[ManagedProcess, Callable[[], None]]]


def _retry_port(process: ManagedProcess, exc: ServiceError, attempt: int, attempts: int) -> bool:
    if attempt < attempts and process.lost_port_race():
        logger.warning("%s lost a race for its port, retrying with new ports: %s", process.name, exc)
        return True
    return False


@contextlib.contextmanager
def running(launch: Launch, *, ready_timeout: float, attempts: int = 3) -> Iterator[ManagedProcess]:
    """Start the process ``launch()`` builds, wait until its probe passes, stop it at the end.

    ``launch`` is called again (at most ``attempts`` times) when the process died because one of its freshly
    chosen ports was taken meanwhile, so it should choose its ports itself.
    """
    for attempt in range(1, attempts + 1):
        process, probe = launch()
        process.start()
        try:
            process.wait_ready(probe, ready_timeout)
        except ServiceError as exc:
            process.stop()
            if _retry_port(process, exc, attempt, attempts):
                continue
            raise
        except BaseException:
            process.stop()
            raise
        break
    try:
        yield process
    finally:
        process.stop()


async def finish_in_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a worker thread and wait for it even if we are cancelled meanwhile.

    Cleanup (stopping a process, removing its directory) must not be cut short by a cancellation; the
    cancellation is re-raised once ``fn`` has finished.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
    return result


@contextlib.asynccontextmanager
async def async_running(launch: Launch, *, ready_timeout: float, attempts: int = 3) -> AsyncIterator[ManagedProcess]:
    """:func:`running` for asyncio: forks in the loop's thread, probes and stops in worker threads."""
    for attempt in range(1, attempts + 1):
        process, probe = launch()
        process.start()
        try:
            await process.wait_ready_async(probe, ready_timeout)
        except ServiceError as exc:
            await finish_in_thread(process.stop)
            if _retry_port(process, exc, attempt, attempts):
                continue
            raise
        except BaseException:
            await finish_in_thread(process.stop)
            raise
        break
    try:
        yield process
    finally:
        await finish_in_thread(process.stop)
