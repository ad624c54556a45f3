"""The systemd protocols niks3d speaks: socket activation, ``sd_notify`` and the service watchdog.

* :func:`listen_fds` takes over the sockets systemd passes (``LISTEN_PID``, ``LISTEN_FDS``,
  ``LISTEN_FDNAMES``; fds from 3 on), as sd_listen_fds(3) describes; ``[]`` means "not socket-activated,
  bind the configured address yourself".
* :class:`Notifier` sends sd_notify(3) datagrams (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
  ``STOPPING=1``) to ``$NOTIFY_SOCKET``; without that variable every call is a no-op.
* :func:`watchdog_interval` and :func:`run_watchdog` keep ``WatchdogSec=`` fed, but only while a health
  check (the server passes "the database answers ``SELECT 1``") succeeds, so systemd restarts a wedged daemon.

Why a plain socket instead of the ``sdnotify`` package: ``sdnotify.SystemdNotifier`` does handle abstract
``@name`` sockets, but it connects once at construction and then swallows every failure with bare
``except:`` clauses (``KeyboardInterrupt`` included) without logging anything; it encodes messages as
Latin-1, so a ``STATUS=`` text outside Latin-1 is silently dropped; and it is untyped. Here each message is
one ``sendto`` from a short-lived ``AF_UNIX`` ``SOCK_DGRAM`` socket, as libsystemd's ``sd_notify`` does (so
there is nothing to close and a re-created socket is found again); it encodes UTF-8, catches only
``OSError`` and logs it at debug level.

These variables are the systemd protocol, not settings, so reading them here does not go around
``config.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable

from niks3d.errors import ConfigError, ConfigProblem
from niks3d.logsetup import log_event

__all__ = ["Notifier", "listen_fds", "listen_fds_with_names", "run_watchdog", "watchdog_interval"]

logger = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
_NOTIFY_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_DECIMAL = re.compile(r"[0-9]+")
# Seconds; systemd drains its notify socket promptly, this only bounds a pathological stall.
_SEND_TIMEOUT = 1.0


def _env_problem(variable: str, reason: str) -> ConfigError:
    return ConfigError([ConfigProblem(file="environment", key=variable, reason=reason)])


def _parse_count(variable: str, text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise _env_problem(variable, f"not a non-negative decimal integer: {text!r}")
    return int(text)


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Take over the sockets passed by systemd, each with its ``FileDescriptorName=`` (else ``"unknown"``).

    Returns ``[]`` when the process is not socket-activated (``LISTEN_PID`` unset or naming another
    process, or ``LISTEN_FDS`` unset or ``0``). Every passed fd gets ``FD_CLOEXEC`` so that child processes
    (nix, postgres) do not inherit it. With ``unset_environment`` the three ``LISTEN_*`` variables are
    removed in every case, so a child cannot mistake them for its own. Raises :class:`ConfigError` when the
    variables are malformed or a passed fd is not an open socket.
    """
    try:
        pid_text = os.environ.get("LISTEN_PID")
        if not pid_text:
            return []
        if _parse_count("LISTEN_PID", pid_text) != os.getpid():
            logger.debug("LISTEN_PID=%s names another process; not socket-activated", pid_text)
            return []
        count_text = os.environ.get("LISTEN_FDS")
        if not count_text:
            return []
        count = _parse_count("LISTEN_FDS", count_text)
        if count == 0:
            return []
        names_text = os.environ.get("LISTEN_FDNAMES")
        names = names_text.split(":") if names_text is not None else ["unknown"] * count
        if len(names) != count:
            raise _env_problem(
                "LISTEN_FDNAMES", f"has {len(names)} names for LISTEN_FDS={count} descriptors: {names_text!r}"
            )
        fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
        for fd in fds:
            _set_cloexec(fd)
        result: list[tuple[str, socket.socket]] = []
        for fd, name in zip(fds, names, strict=True):
            try:
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                for _name, taken in result:
                    taken.close()
                raise _env_problem("LISTEN_FDS", f"fd {fd} ({name}) is not a usable socket: {exc}") from exc
            logger.debug("inherited socket fd %d (%s): %s", fd, name, sock.getsockname())
            result.append((name, sock))
        return result
    finally:
        if unset_environment:
            for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(variable, None)


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The sockets passed by systemd, in order (fd 3 first); ``[]`` when not socket-activated."""
    return [sock for _name, sock in listen_fds_with_names(unset_environment)]


def _set_cloexec(fd: int) -> None:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    except OSError as exc:
        raise _env_problem("LISTEN_FDS", f"fd {fd} is not open: {exc}") from exc


def _notify_address(value: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or ``None`` for a kind we cannot use."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify(3) messages to ``$NOTIFY_SOCKET`` (a path or an abstract ``@name``).

    ``address`` overrides the environment (tests). Without a usable address every method does nothing
    and returns ``False``. Sending never raises: a vanished socket is logged at debug level and reported
    as ``False``. With ``unset_environment`` the variable is removed so that child processes do not talk
    to systemd for us. ``vsock:`` addresses (systemd 254 and later, for VMs) are not supported and disable
    the notifier with a warning.
    """

    def __init__(self, address: str | None = None, *, unset_environment: bool = False) -> None:
        value = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        self._address = _notify_address(value) if value else None
        if value and self._address is None:
            logger.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; not notifying systemd", value)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to."""
        return self._address is not None

    def send_raw(self, message: str) -> bool:
        """Send ``message`` (``KEY=value`` lines) as one datagram; True if it was sent."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            first_line = message.split("\n", 1)[0]
            logger.debug("could not notify systemd at %r (%s): %s", self._address, first_line, exc)
            return False
        return True

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` assignments in one datagram, e.g. ``notify(STATUS="x", EXTEND_TIMEOUT_USEC=n)``.

        Keys must be upper case (``ValueError`` otherwise, a programming error); newlines in values become
        spaces, since each line is one assignment.
        """
        for key in fields:
            if not _NOTIFY_KEY.match(key):
                raise ValueError(f"sd_notify field name {key!r} is not an upper-case identifier")
        lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        return self.send_raw("\n".join(lines))

    def ready(self) -> bool:
        """``READY=1``: startup is complete (migrations ran, the bucket answered, the sites listen)."""
        return self.send_raw("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=<text>``: a one-line state shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and healthy."""
        return self.send_raw("WATCHDOG=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send_raw("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with the ``MONOTONIC_USEC`` timestamp that ``Type=notify-reload`` requires."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or ``None`` if the watchdog is off.

    The watchdog is off when ``WATCHDOG_USEC`` is unset or ``0``, or when ``WATCHDOG_PID`` is set and names
    another process. Raises :class:`ConfigError` when either variable is not a number.
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    usec = _parse_count("WATCHDOG_USEC", usec_text)
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text and _parse_count("WATCHDOG_PID", pid_text) != os.getpid():
        return None
    if usec == 0:
        return None
    return usec / 2 / 1_000_000


async def _health_problem(healthy: Callable[[], Awaitable[bool]], limit: float) -> str | None:
    """Why ``healthy()`` did not answer True within ``limit`` seconds, or ``None`` if it did."""
    try:
        async with asyncio.timeout(limit):
            ok = await healthy()
    except TimeoutError:
        return f"no answer within {limit:g}s"
    except Exception as exc:  # any failure of the check means "not healthy"; the reason goes to the log
        return f"{type(exc).__name__}: {exc}"
    return None if ok else "health check returned false"


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    healthy: Callable[[], Awaitable[bool]],
    *,
    check_timeout: float | None = None,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds, but only while ``healthy()`` answers True in time.

    ``check_timeout`` bounds each check (default: ``interval``). The first check runs at once. Losing health
    is logged as a warning once (event ``watchdog.unhealthy``), regaining it at info (``watchdog.healthy``).
    Runs until cancelled.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, not {interval!r}")
    limit = interval if check_timeout is None else check_timeout
    loop = asyncio.get_running_loop()
    was_healthy = True
    unhealthy_since = 0.0
    while True:
        started = loop.time()
        problem = await _health_problem(healthy, limit)
        if problem is None:
            notifier.watchdog()
            if not was_healthy:
                log_event(
                    logger,
                    logging.INFO,
                    "watchdog.healthy",
                    "health check passes again after %.1fs; watchdog pings resumed",
                    started - unhealthy_since,
                    unhealthy_seconds=round(started - unhealthy_since, 3),
                )
            was_healthy = True
        else:
            if was_healthy:
                unhealthy_since = started
                log_event(
                    logger,
                    logging.WARNING,
                    "watchdog.unhealthy",
                    "health check failed (%s); withholding watchdog pings",
                    problem,
                    reason=problem,
                )
            was_healthy = False
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
