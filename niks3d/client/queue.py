"""The upload queue: store paths waiting to be pushed, in one SQLite database in WAL mode (docs/client.md).

``niks3 hook`` (Nix's post-build hook) adds the paths Nix just built; ``niks3 agent`` takes them in batches,
pushes each batch in one upload session, and deletes a batch's entries only after the server answered
``complete``. Why SQLite: the standard library has it, every write is an atomic, durable transaction (a process
killed at any instruction leaves the last committed state), and WAL mode lets the hooks Nix runs concurrently
append while the agent reads and updates, each waiting for the others' short write transactions instead of
failing. A spool directory of files would need its own fsync/rename protocol and its own way of recording a
batch and its failures.

The lifecycle of an entry (one row per store path):

* **waiting**: ``batch`` is NULL. Adding a path that is already queued only refreshes it (and clears a failure),
  so concurrent or repeated hooks never duplicate an entry.
* **in a batch**: :meth:`Queue.claim` gives the waiting entries a batch number, and the same batch is claimed
  again, with exactly the same paths, until it is finished or released. A restarted agent therefore repeats the
  same push request, which the server resumes (docs/api.md, idempotency key) instead of uploading again.
* **failed**: a push that failed for the batch itself (not because the server was unreachable) releases it with
  the error, counts an attempt and delays the next try; a path that failed once is pushed alone afterwards, so
  one bad path cannot hold back the others. After ``max_attempts`` it stays failed until ``niks3 queue retry``.

This module imports only the standard library's ``sqlite3``, ``os`` and ``time`` (not even ``typing``): the hook
runs it inside every build and must start in milliseconds (docs/client.md has the figures). It reads
``$NIKS3_QUEUE`` itself for the same reason (config.py, the client's settings module, imports more than the
hook can afford).
"""

from __future__ import annotations

# ruff: noqa: PTH100, PTH103, PTH111, PTH116, PTH118, PTH120 -- os.path, not pathlib: the hook imports this module

__all__ = [
    "DEFAULT_SYSTEM_QUEUE",
    "ON_CONFLICT_REFRESH",
    "Entry",
    "Queue",
    "QueueError",
    "default_queue_path",
    "looks_like_store_path",
]

import os
import sqlite3
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the hook milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import TypeVar

    T = TypeVar("T")

DEFAULT_SYSTEM_QUEUE = "/var/lib/niks3-upload/queue.sqlite"
_STORE_PREFIX = "/nix/store/"
_NIX32 = frozenset("0123456789abcdfghijklmnpqrsvwxyz")
_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-._?=")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,
    drv TEXT,
    source TEXT NOT NULL,
    queued_at REAL NOT NULL,
    batch INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS entries_batch ON entries (batch);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# What adding a path that is already queued does; the shell hook (hookscript.py) uses the same clause.
ON_CONFLICT_REFRESH = (
    "ON CONFLICT (path) DO UPDATE SET queued_at = excluded.queued_at, "
    "attempts = CASE WHEN failed THEN 0 ELSE attempts END, "
    "not_before = CASE WHEN failed THEN 0 ELSE not_before END, failed = 0"
)
_ADD = "INSERT INTO entries (path, drv, source, queued_at) VALUES (?, ?, ?, ?) " + ON_CONFLICT_REFRESH  # noqa: S608
_DUE = "failed = 0 AND batch IS NULL AND not_before <= ?"
_FRESH_DUE = f"SELECT path FROM entries WHERE {_DUE} AND attempts = 0 ORDER BY queued_at, path LIMIT ?"  # noqa: S608
_RETRY_DUE = f"SELECT path FROM entries WHERE {_DUE} ORDER BY not_before, path LIMIT 1"  # noqa: S608
_LAST_BATCH = "SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'batch'"
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_COUNTS = "SELECT count(*) - coalesce(sum(failed), 0), coalesce(sum(failed), 0) FROM entries"


class QueueError(Exception):
    """The queue cannot be opened or written; the message names the file and the reason."""


class Entry:
    """One queued store path (a plain class: ``typing.NamedTuple`` and dataclasses cost the hook milliseconds)."""

    __slots__ = ("attempts", "batch", "drv", "failed", "last_error", "not_before", "path", "queued_at", "source")

    def __init__(self, row: tuple[object, ...]) -> None:
        path, drv, source, queued_at, batch, attempts, not_before, failed, last_error = row
        self.path = str(path)
        self.drv = None if drv is None else str(drv)
        self.source = str(source)
        self.queued_at = float(str(queued_at))
        self.batch = None if batch is None else int(str(batch))
        self.attempts = int(str(attempts))
        self.not_before = float(str(not_before))
        self.failed = bool(failed)
        self.last_error = None if last_error is None else str(last_error)

    def as_json(self) -> dict[str, object]:
        """The entry as a JSON object (``niks3 queue --json``)."""
        return {name: getattr(self, name) for name in sorted(self.__slots__)}

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, batch={self.batch}, attempts={self.attempts}, failed={self.failed})"


def looks_like_store_path(text: str) -> bool:
    """A cheap check that ``text`` is ``/nix/store/<32 nix32 chars>-<name>`` (the agent checks strictly again)."""
    if not text.startswith(_STORE_PREFIX):
        return False
    base = text[len(_STORE_PREFIX) :]
    if len(base) < 34 or len(base) > 244 or base[32] != "-":
        return False
    name = base[33:]
    if name in (".", "..") or name.startswith((".-", "..-")):
        return False
    return _NIX32.issuperset(base[:32]) and _NAME_CHARS.issuperset(name)


def default_queue_path(environ: Mapping[str, str] | None = None) -> str:
    """``$NIKS3_QUEUE``; else for root :data:`DEFAULT_SYSTEM_QUEUE`; else ``$XDG_STATE_HOME/niks3/queue.sqlite``."""
    env = os.environ if environ is None else environ
    explicit = env.get("NIKS3_QUEUE")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return DEFAULT_SYSTEM_QUEUE
    state = env.get("XDG_STATE_HOME", "")
    if not state.startswith("/"):
        state = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "niks3", "queue.sqlite")


class Queue:
    """The queue in the SQLite file ``path``; ``create_dir`` makes a missing parent directory (mode 0700)."""

    def __init__(self, path: str, *, create_dir: bool = False, busy_timeout: float = 30.0) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.stat(parent)
        except FileNotFoundError:
            if not create_dir:
                raise QueueError(f"the queue directory {parent} does not exist") from None
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise QueueError(f"cannot create the queue directory {parent}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise QueueError(f"cannot reach the queue directory {parent}: {exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            self._setup()
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open the queue {path}: {exc}") from None

    def _setup(self) -> None:
        db = self._db
        if db.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION:
            db.execute("PRAGMA synchronous=NORMAL")
            return
        # WAL persists in the file; NORMAL is durable against any process crash (docs/client.md).
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")

        def create() -> None:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise QueueError(f"the queue {self.path} has schema version {version}; this niks3 knows only 1")

        self._in_transaction(create)

    def _in_transaction(self, work: Callable[[], T]) -> T:
        """``work`` in one BEGIN IMMEDIATE transaction: the write lock at once, so concurrent writers wait their
        turn (busy_timeout) instead of failing on an upgrade; rolled back if ``work`` raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    def _write_all(self, work: Callable[[], T]) -> T:
        try:
            return self._in_transaction(work)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write the queue {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: Iterable[object] = ()) -> int:
        try:
            return self._db.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write the queue {self.path}: {exc}") from None

    def _many(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        self._write_all(lambda: self._db.executemany(sql, rows))

    # -- writers: the hook, `niks3 queue add`, the store scan -----------------------------------------------

    def add(self, paths: Iterable[str], *, drv: str | None = None, source: str = "hook") -> None:
        """Queue ``paths`` in one transaction; a path already queued is refreshed, never duplicated."""
        now = time.time()
        self._many(
            _ADD,
            [(p, drv, source, now) for p in dict.fromkeys(paths)],
        )

    # -- the agent ----------------------------------------------------------------------------------------

    def claim(self, limit: int, now: float | None = None) -> tuple[int, list[str]] | None:
        """The batch to push next: the unfinished one if there is one, else a new one; None when nothing is due.

        A new batch takes up to ``limit`` due entries that never failed, or else the one due entry that failed
        longest ago, alone.
        """
        moment = time.time() if now is None else now
        return self._write_all(lambda: self._claim(limit, moment))

    def _claim(self, limit: int, now: float) -> tuple[int, list[str]] | None:
        db = self._db
        row = db.execute("SELECT min(batch) FROM entries WHERE batch IS NOT NULL").fetchone()
        if row[0] is not None:
            batch = int(row[0])
        else:
            fresh = db.execute(_FRESH_DUE, (now, max(1, limit)))
            paths = [r[0] for r in fresh]
            if not paths:
                paths = [r[0] for r in db.execute(_RETRY_DUE, (now,))]
            if not paths:
                return None
            batch = 1 + int(db.execute(_LAST_BATCH).fetchone()[0])
            db.execute(_SET_META, ("batch", str(batch)))
            db.executemany("UPDATE entries SET batch = ? WHERE path = ?", [(batch, p) for p in paths])
        paths = [r[0] for r in db.execute("SELECT path FROM entries WHERE batch = ? ORDER BY path", (batch,))]
        return batch, paths

    def finish(self, batch: int) -> int:
        """The server acknowledged ``complete`` for ``batch``: delete its entries; returns how many."""
        return self._write("DELETE FROM entries WHERE batch = ?", (batch,))

    def drop(self, paths: Iterable[str], reason: str) -> None:
        """Delete entries that can never be pushed (``reason`` is for the caller's log line)."""
        del reason
        self._many("DELETE FROM entries WHERE path = ?", [(p,) for p in paths])

    def release(self, batch: int, error: str, *, delay: float, max_attempts: int, now: float | None = None) -> None:
        """The push of ``batch`` failed because of the batch: count an attempt and delay the next.

        Only a path that failed when pushed alone can become failed (after ``max_attempts``): the failure of a
        larger batch may be any one path's.
        """
        moment = time.time() if now is None else now
        self._write(
            "UPDATE entries SET batch = NULL, attempts = attempts + 1, last_error = ?, not_before = ?, "
            "failed = (attempts + 1 >= ? AND (SELECT count(*) FROM entries WHERE batch = ?) = 1) WHERE batch = ?",
            (error, moment + delay, max_attempts, batch, batch),
        )

    def retry_failed(self) -> int:
        """Make every failed entry due again (``niks3 queue retry``); returns how many."""
        return self._write("UPDATE entries SET failed = 0, attempts = 0, not_before = 0 WHERE failed = 1")

    def drop_failed(self) -> int:
        """Delete every failed entry; returns how many."""
        return self._write("DELETE FROM entries WHERE failed = 1")

    # -- reading ------------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every entry, oldest first."""
        rows = self._db.execute(
            "SELECT path, drv, source, queued_at, batch, attempts, not_before, failed, last_error "
            "FROM entries ORDER BY queued_at, path"
        )
        return [Entry(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """``(waiting or in a batch, failed)``."""
        row = self._db.execute(_COUNTS).fetchone()
        return int(row[0]), int(row[1])

    def next_due(self) -> float | None:
        """When the earliest delayed entry is due again (None when none is delayed)."""
        row = self._db.execute("SELECT min(not_before) FROM entries WHERE failed = 0 AND batch IS NULL").fetchone()
        return None if row[0] is None else float(row[0])

    def get_meta(self, key: str) -> str | None:
        """A value the agent keeps in the queue (the store scan's cursor)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``."""
        self._write(_SET_META, (key, value))

    def data_version(self) -> int:
        """Changes when another connection committed (SQLite's ``PRAGMA data_version``), for cheap polling."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])
