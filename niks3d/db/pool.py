"""The asyncpg connection pool: creating it from :class:`~niks3d.config.DatabaseSettings`, and a health ping.

Every connection gets ``application_name=niks3d`` (so operators see niks3d in ``pg_stat_activity``) and codecs
that turn ``json``/``jsonb`` columns into Python values and back.

Every wait is bounded (docs/configuration.md, ``[database]``): taking a connection from the pool (and giving it
back) by ``acquire_timeout``, each statement by PostgreSQL's ``statement_timeout`` and, for a server that stopped
answering altogether (a frozen or partitioned host), by the client's own deadline a few seconds later. What
these raise is in :data:`UNAVAILABLE`, which the HTTP layer answers with 503 and Retry-After.

A pool that cannot reach the server raises :class:`~niks3d.errors.DatabaseError` naming the host or socket it
tried, never the password.
"""

from __future__ import annotations

__all__ = ["UNAVAILABLE", "DbPool", "close_pool", "create_pool", "describe_target", "open_pool", "ping"]

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from niks3d.errors import DatabaseError
from niks3d.logsetup import log_event

if TYPE_CHECKING:
    from niks3d.config import DatabaseSettings

logger = logging.getLogger(__name__)

# The pool type every niks3d module passes around (a string, so that it costs nothing at run time).
DbPool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

APPLICATION_NAME = "niks3d"
DEFAULT_PORT = 5432
# How long closing the pool waits for connections in use to be released before it terminates them.
CLOSE_TIMEOUT = 10.0
# The client's own deadline for a statement runs this much longer than the server's statement_timeout, so that a
# server that still answers reports the cancellation itself.
CLIENT_DEADLINE_MARGIN = 5.0

# What a request sees while PostgreSQL is away, stalled or overloaded: a timeout (the pool, a statement, the
# client's deadline), a lost or refused connection, a server shutting down or out of connections.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncpg.QueryCanceledError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class _Pool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg has no type information
    """asyncpg's pool, with ``acquire_timeout`` as the default for every ``acquire()`` (and so for the release that
    follows it: asyncpg reuses the acquire timeout there, and a release that resets a connection to a server that
    no longer answers would otherwise wait forever)."""

    def __init__(self, *args: object, acquire_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> object:
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)


# What asyncpg raises when it cannot connect or authenticate: OS errors (refused, no such socket,
# unreachable), timeouts, server errors (bad password, unknown database) and protocol errors.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def describe_target(url: str) -> str:
    """Say where ``url`` points, for error messages: hosts or socket paths with ports, database and user.

    The password is never part of the answer, even if the URL carried one.
    """
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = unquote(userinfo.partition(":")[0]) or query.get("user", "")
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
    port = query.get("port", str(DEFAULT_PORT))
    if "host" in query:
        endpoints = [(host, port) for host in query["host"].split(",") if host]
    else:
        endpoints = [_split_host_port(unquote(item), port) for item in hostinfo.split(",") if item]
    targets = [
        f"socket {host.rstrip('/')}/.s.PGSQL.{host_port}" if host.startswith("/") else f"{host}:{host_port}"
        for host, host_port in endpoints
    ]
    where = ", ".join(targets) or "the default socket (PGHOST, or /run/postgresql)"
    details = ", ".join(d for d in (f"database {database}" if database else "", f"user {user}" if user else "") if d)
    return f"{where} ({details})" if details else where


def _split_host_port(item: str, default_port: str) -> tuple[str, str]:
    """``host:port``, ``[v6]:port``, ``host`` or ``[v6]`` into host and port."""
    if item.startswith("["):
        host, _, rest = item.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") and rest[1:] else default_port
    host, colon, port = item.rpartition(":")
    return (host, port) if colon and port.isdigit() else (item, default_port)


def _redact(text: str, password: str | None) -> str:
    return text.replace(password, "********") if password else text


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Per-connection set-up: ``json`` and ``jsonb`` values arrive as Python objects and go out as JSON."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: DatabaseSettings, password: str | None) -> DbPool:
    """Create the pool and check that the server answers; raise DatabaseError naming the target if not.

    ``password`` comes from ``database.password_file`` (None for peer or trust authentication). Even with
    ``pool_min_size = 0`` one connection is opened and released here, so that a wrong URL or password is
    reported at start-up rather than on the first request.
    """
    target = describe_target(settings.url)
    logger.debug("connecting to PostgreSQL at %s", target)
    statement_ms = str(round(settings.statement_timeout * 1000))
    try:
        pool: DbPool = await _Pool(
            settings.url,
            acquire_timeout=settings.acquire_timeout,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            min_size=settings.pool_min_size,
            max_size=max(settings.pool_max_size, settings.pool_min_size),
            max_queries=50000,
            max_inactive_connection_lifetime=300.0,
            loop=None,
            init=_init_connection,
            password=password,
            timeout=settings.connect_timeout,
            command_timeout=settings.statement_timeout + CLIENT_DEADLINE_MARGIN,
            server_settings={"application_name": APPLICATION_NAME, "statement_timeout": statement_ms},
        )
    except _CONNECT_ERRORS as exc:
        reason = _redact(str(exc) or type(exc).__name__, password)
        raise DatabaseError(f"cannot connect to PostgreSQL at {target}: {reason}") from exc
    except ValueError as exc:  # asyncpg's DSN parser
        raise DatabaseError(f"database.url is not usable ({target}): {_redact(str(exc), password)}") from exc
    try:
        async with pool.acquire(timeout=settings.connect_timeout) as conn:
            await conn.fetchval("SELECT 1")
    except _CONNECT_ERRORS as exc:
        pool.terminate()
        reason = _redact(str(exc) or type(exc).__name__, password)
        raise DatabaseError(f"cannot connect to PostgreSQL at {target}: {reason}") from exc
    log_event(
        logger,
        logging.INFO,
        "db.connected",
        "connected to PostgreSQL at %s",
        target,
        pool_max_size=settings.pool_max_size,
    )
    return pool


async def close_pool(pool: DbPool, grace: float = CLOSE_TIMEOUT) -> None:
    """Close ``pool`` gracefully, or terminate its connections if they are not released within ``grace``."""
    try:
        await asyncio.wait_for(pool.close(), grace)
    except TimeoutError:
        logger.warning("database connections were not released within %.0f s; terminating them", grace)
        pool.terminate()


@asynccontextmanager
async def open_pool(settings: DatabaseSettings, password: str | None) -> AsyncIterator[DbPool]:
    """``async with open_pool(...) as pool``: :func:`create_pool`, closed again at the end."""
    pool = await create_pool(settings, password)
    try:
        yield pool
    finally:
        await close_pool(pool)


async def ping(pool: DbPool, timeout: float) -> bool:  # noqa: ASYNC109 - the watchdog's deadline
    """True if the server answers ``SELECT 1`` within ``timeout`` seconds; False on any error or timeout.

    For the systemd watchdog and ``/ready``: it never raises (except when the caller itself is cancelled).
    """
    try:
        async with asyncio.timeout(timeout), pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception as exc:
        logger.debug("database ping failed: %s", exc or type(exc).__name__)
        return False
