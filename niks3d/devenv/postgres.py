"""A throwaway PostgreSQL server from the system's binaries, for the tests and ``niks3d dev``.

:func:`postgres_server` (and :func:`async_postgres_server`) runs ``initdb`` into a fresh directory (trust
authentication, no fsync, UTF8, locale C), starts ``postgres`` on a Unix socket in that directory and on a
free 127.0.0.1 port, waits until it accepts connections, and at the end stops it (fast shutdown, then
SIGKILL) and removes the directory unless ``keep=True``.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user (or ``nobody``),
which owns the directory. PostgreSQL's children (backends, checkpointer, ...) each start their own session, so
the postmaster's process group holds only the postmaster: :meth:`PostgresServer.pids` lists them all. They
exit by themselves when the postmaster dies.
"""

from __future__ import annotations

__all__ = [
    "PostgresServer",
    "async_postgres_server",
    "find_postgres_bindir",
    "postgres_server",
]

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

from niks3d.devenv.process import (
    ManagedProcess,
    NotReady,
    RunAs,
    ServiceDirectory,
    async_running,
    finish_in_thread,
    free_port,
    running,
)
from niks3d.errors import ServiceError

logger = logging.getLogger(__name__)

DEBIAN_PREFIX = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# fsync and friends off: the data is thrown away, speed is what matters.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "250",
}
_SOCKET_NAME_ROOM = 20  # "/.s.PGSQL.65535" must fit in a 107-byte sun_path
_SUN_PATH_MAX = 107


def _version(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bindir() -> Path:
    """The directory with ``initdb`` and ``postgres``: PATH's, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(DEBIAN_PREFIX.glob("*/bin"), key=_version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    raise ServiceError(
        "PostgreSQL server binaries (initdb, postgres) were found neither on PATH nor under "
        f"{DEBIAN_PREFIX}/*/bin; install Debian's postgresql package"
    )


def _service_user() -> RunAs | None:
    """Who runs the server: ourselves, or when we are root the ``postgres`` user (``nobody`` if absent)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return RunAs.lookup(name)
    raise ServiceError("running as root, but neither user 'postgres' nor 'nobody' exists to run PostgreSQL")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # English messages: port-race detection reads them
    return env


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresServer:
    """A running throwaway PostgreSQL; use :func:`postgres_server` or :func:`async_postgres_server`."""

    def __init__(
        self,
        directory: ServiceDirectory,
        *,
        bindir: Path,
        superuser: str = SUPERUSER,
        settings: Mapping[str, str] | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        self.directory = directory
        self.bindir = bindir
        self.user = superuser
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.run_as = run_as
        self.port = 0
        self._process: ManagedProcess | None = None

    @property
    def base_dir(self) -> Path:
        return self.directory.path

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket (``host=`` for libpq and asyncpg)."""
        return self.base_dir

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's pid; it leads its own process group."""
        if self._process is None:
            raise ServiceError("PostgreSQL is not running")
        return self._process.pid

    def check_alive(self) -> None:
        """Raise a ServiceError with the log's tail if the postmaster has died.

        The dead postmaster is reaped (no zombie is left), and its stale ``postmaster.pid`` removed, so that a
        later start on this data directory is not refused.
        """
        if self._process is None:
            raise ServiceError("PostgreSQL is not running")
        try:
            self._process.check_alive()
        except ServiceError:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "postmaster.pid").unlink()
            raise

    def pids(self) -> list[int]:
        """The postmaster and every process it started, to signal them all (say SIGSTOP to freeze the server).

        PostgreSQL's children each call setsid(), so signalling the postmaster's process group misses them.
        """
        postmaster = self.pid
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
                children.append(int(entry.name))
        return [postmaster, *sorted(children)]

    @property
    def dsn(self) -> str:
        """``postgresql://user@127.0.0.1:port/postgres``."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{quote(self.user, safe='')}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def initdb(self) -> None:
        """Create the cluster in :attr:`data_dir`."""
        argv = [
            str(self.bindir / "initdb"),
            *("-D", str(self.data_dir), "-U", self.user, "-E", "UTF8", "--locale=C"),
            *("--auth=trust", "--no-sync", "--no-instructions"),
        ]
        ManagedProcess(
            "initdb",
            argv,
            log_path=self.base_dir / "initdb.log",
            cwd=self.base_dir,
            env=_child_env(),
            run_as=self.run_as,
        ).run(timeout=120)

    def launch(self) -> tuple[ManagedProcess, Callable[[], None]]:
        """The server process on a freshly chosen port, and its readiness probe."""
        self.port = free_port()
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir), "-h", "127.0.0.1"]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self._process = ManagedProcess(
            "postgres",
            argv,
            log_path=self.log_path,
            cwd=self.base_dir,
            env=_child_env(),
            run_as=self.run_as,
            # SIGINT is PostgreSQL's fast shutdown: it ends sessions, so no client can hold the stop up.
            stop_signal=signal.SIGINT,
            death_signal=signal.SIGINT,
        )
        return self._process, self._probe

    def _probe(self) -> None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            raise NotReady("no postmaster.pid yet") from None
        if len(lines) < 8 or lines[7].strip() != "ready":
            raise NotReady(f"postmaster status {lines[7].strip() if len(lines) >= 8 else 'unknown'!r}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError as exc:
            raise NotReady(f"127.0.0.1:{self.port}: {exc}") from None

    def _psql(self, sql: str) -> None:
        psql = self.bindir / "psql"
        argv = [str(psql) if psql.exists() else "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        argv += ["-d", self.dsn, "-c", sql]
        logger.info("running %s", shlex.join(argv))
        try:
            result = subprocess.run(argv, capture_output=True, text=True, env=_child_env(), timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"psql failed to run {sql!r}: {exc}") from exc
        if result.returncode != 0:
            raise ServiceError(f"psql failed to run {sql!r} against {self.dsn}: {result.stderr.strip()}")

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self._psql(f"CREATE DATABASE {_quote_ident(name)}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
        self._psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")


def _prepare(base_dir: Path | None, superuser: str, settings: Mapping[str, str] | None) -> PostgresServer:
    bindir = find_postgres_bindir()
    run_as = _service_user()
    directory = ServiceDirectory.create(
        base_dir, "niks3d-postgres-", run_as=run_as, max_length=_SUN_PATH_MAX - _SOCKET_NAME_ROOM
    )
    return PostgresServer(directory, bindir=bindir, superuser=superuser, settings=settings, run_as=run_as)


def _finish(server: PostgresServer, keep: bool) -> None:
    if keep:
        logger.info("keeping PostgreSQL's directory %s", server.base_dir)
    else:
        server.directory.remove()


@contextlib.contextmanager
def postgres_server(
    base_dir: Path | None = None,
    *,
    keep: bool = False,
    superuser: str = SUPERUSER,
    settings: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[PostgresServer]:
    """A running PostgreSQL in ``base_dir`` (a fresh temp dir if None; it must not exist or be empty).

    ``settings`` are extra ``-c name=value`` server settings.
    """
    server = _prepare(base_dir, superuser, settings)
    try:
        server.initdb()
        with running(server.launch, ready_timeout=ready_timeout):
            logger.info("PostgreSQL is ready at %s", server.dsn)
            yield server
    finally:
        _finish(server, keep)


@contextlib.asynccontextmanager
async def async_postgres_server(
    base_dir: Path | None = None,
    *,
    keep: bool = False,
    superuser: str = SUPERUSER,
    settings: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[PostgresServer]:
    """:func:`postgres_server` for asyncio (``niks3d dev``): blocking steps run in worker threads."""
    server = _prepare(base_dir, superuser, settings)
    try:
        await finish_in_thread(server.initdb)
        async with async_running(server.launch, ready_timeout=ready_timeout):
            logger.info("PostgreSQL is ready at %s", server.dsn)
            yield server
    finally:
        await finish_in_thread(lambda: _finish(server, keep))
