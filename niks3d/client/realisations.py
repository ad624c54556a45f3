"""Realisations of content-addressed derivations, read from the local store's SQLite database.

Nix (2.8 onwards, with the experimental ``ca-derivations`` feature) records which output path each
derivation output was built to in the ``Realisations`` table of ``<state>/db/db.sqlite``: ``drvPath`` holds
the id's hash part (``sha256:<base16 hash modulo>``), ``outputName`` the output, ``outputPath`` the
``ValidPaths`` row of the result, and ``RealisationsRefs`` links a realisation to the realisations it depends
on. No ``nix`` command lists realisations by output path, so the client reads the database, read-only. A
store that never had the feature enabled has no such table: then there is nothing to send.

Nix 2.35 records them in ``BuildTraceV3`` instead (``drvPath`` the derivation's basename, ``outputName``,
``outputPath`` the full path; docs/protocol.md 4.4): :func:`query_build_traces` reads those, which the server
writes as ``build-trace-v2/`` entries. A store upgraded from an older Nix may have both tables.
"""

from __future__ import annotations

__all__ = ["LocalRealisation", "query_build_traces", "query_realisations"]

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niks3d.nix.errors import InvalidStorePath, NixFormatError
from niks3d.nix.realisation import parse_realisation_id
from niks3d.nix.storepath import StorePath, validate_name

logger = logging.getLogger(__name__)

_BATCH = 500  # SQLite's default limit on host parameters is 999 in old versions
MAX_PER_PATH = 64  # the server accepts at most this many realisations per store path


@dataclass(frozen=True)
class LocalRealisation:
    """One realisation as the push API takes it: its id, output path and dependencies (id -> path)."""

    id: str
    out_path: StorePath
    dependent_realisations: tuple[tuple[str, StorePath], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The ``realisations[]`` entry of a session request (docs/api.md)."""
        return {
            "id": self.id,
            "out_path": self.out_path.path,
            "dependent_realisations": {dep_id: dep.path for dep_id, dep in self.dependent_realisations},
        }


def _connect(
    db_path: Path, tables: frozenset[str] = frozenset({"Realisations", "RealisationsRefs"})
) -> sqlite3.Connection | None:
    if not db_path.exists():
        logger.debug("no Nix database at %s; no realisations to send", db_path)
        return None
    try:
        conn = sqlite3.connect(db_path.absolute().as_uri() + "?mode=ro", uri=True, timeout=10)
        found = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        logger.warning("cannot read realisations from %s (%s); pushing without them", db_path, exc)
        return None
    if not (tables | {"ValidPaths"}) <= found:
        conn.close()
        return None
    return conn


def _make_id(drv_hash: object, output: object) -> str | None:
    text = f"{drv_hash}!{output}"
    try:
        parse_realisation_id(text)
    except NixFormatError as exc:
        logger.warning("ignoring a realisation in the Nix database: %s", exc)
        return None
    return text


def _rows(conn: sqlite3.Connection, sql: str, values: list[Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(values), _BATCH):
        batch = values[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        rows.extend(conn.execute(sql.format(marks=marks), batch).fetchall())
    return rows


def _query(conn: sqlite3.Connection, paths: list[str]) -> dict[StorePath, list[LocalRealisation]]:
    own = _rows(
        conn,
        "SELECT r.id, r.drvPath, r.outputName, v.path FROM Realisations r "
        "JOIN ValidPaths v ON v.id = r.outputPath WHERE v.path IN ({marks}) ORDER BY r.id",
        paths,
    )
    deps: dict[int, list[tuple[str, StorePath]]] = {}
    for referrer, drv_hash, output, dep_path in _rows(
        conn,
        "SELECT rr.referrer, d.drvPath, d.outputName, v.path FROM RealisationsRefs rr "
        "JOIN Realisations d ON d.id = rr.realisationReference JOIN ValidPaths v ON v.id = d.outputPath "
        "WHERE rr.referrer IN ({marks})",
        [row[0] for row in own],
    ):
        dep_id = _make_id(drv_hash, output)
        if dep_id is not None:
            deps.setdefault(referrer, []).append((dep_id, StorePath.parse(dep_path)))
    result: dict[StorePath, list[LocalRealisation]] = {}
    for row_id, drv_hash, output, out_path in own:
        rid = _make_id(drv_hash, output)
        if rid is None:
            continue
        path = StorePath.parse(out_path)
        found = result.setdefault(path, [])
        if len(found) >= MAX_PER_PATH:
            logger.warning("%s has more than %d realisations; sending the first %d", path, MAX_PER_PATH, MAX_PER_PATH)
            continue
        found.append(LocalRealisation(rid, path, tuple(sorted(dict(deps.get(row_id, [])).items()))))
    return result


def query_realisations(db_path: Path, paths: Iterable[StorePath]) -> dict[StorePath, list[LocalRealisation]]:
    """The realisations whose output is one of ``paths``, keyed by output path (absent: none).

    Never fails the push: an unreadable database or one without the CA tables gives ``{}`` (with a warning
    when the database exists but cannot be read).
    """
    wanted = sorted({p.path for p in paths})
    if not wanted:
        return {}
    conn = _connect(db_path)
    if conn is None:
        return {}
    try:
        return _query(conn, wanted)
    except (sqlite3.Error, NixFormatError) as exc:
        logger.warning("cannot read realisations from %s (%s); pushing without them", db_path, exc)
        return {}
    finally:
        conn.close()


def _build_traces(conn: sqlite3.Connection, paths: list[str]) -> dict[StorePath, list[tuple[str, str]]]:
    result: dict[StorePath, set[tuple[str, str]]] = {}
    for drv, output, out_path in _rows(
        conn, "SELECT drvPath, outputName, outputPath FROM BuildTraceV3 WHERE outputPath IN ({marks})", paths
    ):
        try:
            entry = (_derivation_basename(drv), validate_name(output, "output name"))
            path = StorePath.parse(out_path)
        except (NixFormatError, TypeError) as exc:
            logger.warning("ignoring a build trace entry in the Nix database: %s", exc)
            continue
        found = result.setdefault(path, set())
        if len(found) < MAX_PER_PATH:
            found.add(entry)
    return {path: sorted(entries) for path, entries in result.items()}


def _derivation_basename(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"drvPath {value!r} is not text")
    drv = StorePath.from_basename(value.removeprefix("/nix/store/"))
    if not drv.is_derivation:
        raise InvalidStorePath(f"drvPath {value!r} is not a derivation")
    return drv.basename


def query_build_traces(db_path: Path, paths: Iterable[StorePath]) -> dict[StorePath, list[tuple[str, str]]]:
    """Nix 2.35's build-trace entries whose output is one of ``paths``: (drv basename, output), by output path.

    Never fails the push, as :func:`query_realisations`; a store without ``BuildTraceV3`` gives ``{}``.
    """
    wanted = sorted({p.path for p in paths})
    if not wanted:
        return {}
    conn = _connect(db_path, frozenset({"BuildTraceV3"}))
    if conn is None:
        return {}
    try:
        return _build_traces(conn, wanted)
    except sqlite3.Error as exc:
        logger.warning("cannot read build trace entries from %s (%s); pushing without them", db_path, exc)
        return {}
    finally:
        conn.close()
