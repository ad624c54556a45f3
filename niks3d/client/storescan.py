"""Store paths that appeared in the local store since a cursor: what the post-build hook never sees.

Nix calls the post-build hook only for paths it built, not for paths it substituted from another cache or
fetched (``builtins.fetchurl``, ``nix-store --add``). A CI job that wants those cached too runs the agent with
``--scan-store``: every round, it reads the store's own database (``<state>/db/db.sqlite``, table
``ValidPaths``) for rows added since the last round and queues them. The cursor is the row id, which only grows
(Nix inserts with SQLite's autoincrement), and is kept in the queue; ``--since TIME`` starts it at the first row
registered at or after TIME (``registrationTime``, seconds since the epoch).

The database is opened read-only; a chroot store (``--store DIR``) has it under ``DIR/nix/var/nix/db``.
Derivations (``.drv``) are skipped: the cache is for outputs, and the hook does not queue them either.
"""

from __future__ import annotations

__all__ = ["StoreScan", "parse_since"]

import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from niks3d.errors import ClientError

logger = logging.getLogger(__name__)


def parse_since(text: str, now: float | None = None) -> float:
    """``TIME`` of ``--since``: seconds since the epoch, an ISO 8601 time (UTC unless it says), or ``-5m``-style."""
    value = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value.startswith("-") and value[-1:] in units and value[1:-1].isdigit():
        return (time.time() if now is None else now) - int(value[1:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ClientError(
            f"--since {text!r}: expected seconds since the epoch, an ISO 8601 time or -<N>s/m/h/d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True)
class StoreScan:
    """Reads new rows of the store database at ``db_path``."""

    db_path: Path

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise ClientError(f"cannot open the Nix store database {self.db_path}: {exc}") from None

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        db = self._connect()
        try:
            return list(db.execute(sql, params))
        except sqlite3.Error as exc:
            raise ClientError(f"cannot read the Nix store database {self.db_path}: {exc}") from None
        finally:
            db.close()

    def cursor_at(self, since: float | None) -> int:
        """The cursor before the first row registered at or after ``since`` (None: after the newest row)."""
        if since is None:
            rows = self._query("SELECT coalesce(max(id), 0) FROM ValidPaths", ())
        else:
            rows = self._query(
                "SELECT coalesce(min(id), (SELECT coalesce(max(id), 0) + 1 FROM ValidPaths)) - 1 "
                "FROM ValidPaths WHERE registrationTime >= ?",
                (int(since),),
            )
        return int(str(rows[0][0]))

    def new_paths(self, cursor: int, limit: int = 10_000) -> tuple[list[str], int]:
        """Output paths registered after ``cursor`` (up to ``limit`` rows), and the cursor after them."""
        rows = self._query("SELECT id, path FROM ValidPaths WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit))
        if not rows:
            return [], cursor
        paths = [str(path) for _id, path in rows if not str(path).endswith(".drv")]
        return paths, int(str(rows[-1][0]))
