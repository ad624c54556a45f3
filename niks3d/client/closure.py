"""The closure of the paths to push, as ``nix path-info --json --recursive`` reports it, or read from the store's
database when this user can (:func:`closure_from_db`: the same values, without starting Nix; docs/client.md).

Nix has printed that JSON in several shapes, and all of them are accepted:

* Nix 2.8 to 2.18 and Lix: an array of objects, each with ``path``; ``narHash`` is SRI (``sha256-…``) or
  ``sha256:<nix32|base16>``; store paths are full paths.
* Nix 2.19 and later: an object keyed by store path; an invalid path maps to ``null``.
* Newer experimental versions: store paths may be basenames (with an optional ``storeDir``), hashes may be
  objects ``{"algorithm", "format", "hash"}`` and ``ca`` may be ``{"method", "hash"}``.

Nix 2.34 warns that ``--json`` without ``--json-format`` is deprecated and will become an error, and older
versions do not know the flag; so the client asks ``nix --version`` first and passes ``--json-format 2`` to Nix
2.34 and later (not to Lix, whose version numbers are its own).

Whatever the input, a :class:`PathInfo` holds validated values: full :class:`StorePath` objects, the raw
digest, and ``ca`` in Nix's string form (``fixed:r:sha256:<nix32>``), which is what the server expects.
"""

from __future__ import annotations

__all__ = ["PathInfo", "json_format_args", "parse_path_info_json", "path_info_argv", "query_closure"]

import asyncio
import base64
import binascii
import json
import logging
import re
import shlex
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niks3d.client.store import LocalStore
from niks3d.errors import ClientError
from niks3d.nix import nix32
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import parse_sha256
from niks3d.nix.storepath import STORE_DIR, StorePath

logger = logging.getLogger(__name__)

_ARGV_BATCH = 500  # store paths per nix invocation, to stay far below the kernel's argv limit
_DIGEST_LENGTHS = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
_JSON_FORMAT_SINCE = (2, 34)  # the first Nix that asks for --json-format (and accepts 1 or 2)
_VERSION_RE = re.compile(r"(\d+)\.(\d+)")
_CA_PREFIXES = {"nar": "fixed:r:", "flat": "fixed:", "text": "text:", "git": "fixed:git:"}


@dataclass(frozen=True)
class PathInfo:
    """What the server needs to know about one store path of the closure."""

    path: StorePath
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None
    ca: str | None
    signatures: tuple[str, ...] = ()  # ``name:base64`` as the store holds them (unchecked)


def _fail(where: str, message: str) -> ClientError:
    return ClientError(f"nix path-info output: {where}: {message}")


def _store_path(value: object, where: str) -> StorePath:
    if not isinstance(value, str):
        raise _fail(where, f"expected a store path string, got {type(value).__name__}")
    try:
        return StorePath.parse(value) if value.startswith("/") else StorePath.from_basename(value)
    except NixFormatError as exc:
        raise _fail(where, str(exc)) from None


def _digest(algorithm: str, fmt: str | None, text: str, where: str) -> bytes:
    """Decode a hash given as algorithm, optional format name, and encoded text."""
    size = _DIGEST_LENGTHS.get(algorithm)
    if size is None:
        raise _fail(where, f"unsupported hash algorithm {algorithm!r}")
    try:
        if text.startswith(f"{algorithm}-"):
            text, fmt = text[len(algorithm) + 1 :], "base64"
        elif text.startswith(f"{algorithm}:"):
            text = text[len(algorithm) + 1 :]
        if fmt in (None, "base16") and len(text) == 2 * size:
            return bytes.fromhex(text)
        if fmt in (None, "nix32", "base32") and len(text) == nix32.encoded_length(size):
            return nix32.decode(text, size)
        if fmt in (None, "base64", "sri"):
            raw = base64.b64decode(text, validate=True)
            if len(raw) == size:
                return raw
    except (ValueError, binascii.Error, NixFormatError):
        pass
    raise _fail(where, f"{text!r} is not a {algorithm} hash in format {fmt or 'nix32, base16 or base64'}")


def _nar_hash(value: object, where: str) -> bytes:
    if isinstance(value, str):
        try:
            return parse_sha256(value)
        except NixFormatError as exc:
            raise _fail(where, str(exc)) from None
    if isinstance(value, dict):
        algorithm, text, fmt = value.get("algorithm"), value.get("hash"), value.get("format")
        if algorithm != "sha256" or not isinstance(text, str) or not isinstance(fmt, str | None):
            raise _fail(where, f"expected a sha256 hash object, got {json.dumps(value)[:120]}")
        return _digest(algorithm, fmt, text, where)
    raise _fail(where, f"expected a hash, got {type(value).__name__}")


def _hash_text(value: object, where: str) -> str:
    """A hash in the ``<algo>:<nix32>`` form of Nix's content addresses, from a string or a hash object."""
    if isinstance(value, dict):
        algorithm, text, fmt = value.get("algorithm"), value.get("hash"), value.get("format")
    elif isinstance(value, str):
        algorithm, text, fmt = value.replace("-", ":", 1).split(":", 1)[0], value, None
    else:
        raise _fail(where, f"expected a hash, got {type(value).__name__}")
    if not isinstance(algorithm, str) or not isinstance(text, str) or not isinstance(fmt, str | None):
        raise _fail(where, f"expected a hash, got {json.dumps(value)[:120]}")
    return f"{algorithm}:{nix32.encode(_digest(algorithm, fmt, text, where))}"


def _content_address(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        prefix = _CA_PREFIXES.get(str(value.get("method")))
        if prefix is None:
            raise _fail(where, f"unknown content-addressing method {value.get('method')!r}")
        return prefix + _hash_text(value.get("hash"), f"{where}.hash")
    raise _fail(where, f"expected a content address, got {type(value).__name__}")


def _signatures(value: object, where: str) -> tuple[str, ...]:
    """Strings (Nix up to 2.34) or ``{"keyName", "sig"}`` objects (``--json-format 3``), as ``name:base64``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(where, f"expected an array of signatures, got {type(value).__name__}")
    sigs: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and isinstance(item.get("keyName"), str) and isinstance(item.get("sig"), str):
            sigs.append(f"{item['keyName']}:{item['sig']}")
        elif isinstance(item, str):
            sigs.append(item)
        else:
            raise _fail(f"{where}[{i}]", f"expected a signature, got {json.dumps(item)[:120]}")
    return tuple(sorted(set(sigs)))


def _nar_size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, f"expected a positive integer NAR size, got {value!r}")
    return value


def _one(entry: Any, key: str | None, where: str) -> PathInfo:
    if entry is None:
        raise ClientError(f"{key or where} is not valid in the Nix store (nix path-info reported it as invalid)")
    if not isinstance(entry, dict):
        raise _fail(where, f"expected an object, got {type(entry).__name__}")
    store_dir = entry.get("storeDir", STORE_DIR)
    if store_dir != STORE_DIR:
        raise _fail(where, f"store directory {store_dir!r} is not supported, only {STORE_DIR}")
    if entry.get("valid") is False:
        raise ClientError(f"{entry.get('path') or key} is not valid in the Nix store")
    path = _store_path(entry.get("path", key), f"{where}.path")
    refs_raw = entry.get("references", [])
    if not isinstance(refs_raw, list):
        raise _fail(f"{where}.references", "expected an array")
    refs = {r.basename: r for r in (_store_path(x, f"{where}.references[{i}]") for i, x in enumerate(refs_raw))}
    deriver = None
    if entry.get("deriver"):
        deriver = _store_path(entry["deriver"], f"{where}.deriver")
    return PathInfo(
        path=path,
        nar_hash=_nar_hash(entry.get("narHash"), f"{where}.narHash"),
        nar_size=_nar_size(entry.get("narSize"), f"{where}.narSize"),
        references=tuple(refs[k] for k in sorted(refs)),
        deriver=deriver,
        ca=_content_address(entry.get("ca"), f"{where}.ca"),
        signatures=_signatures(entry.get("signatures"), f"{where}.signatures"),
    )


def parse_path_info_json(data: str | bytes | object) -> dict[StorePath, PathInfo]:
    """Parse the output of ``nix path-info --json`` (any shape, see the module docstring).

    Returns the infos keyed by store path. Raises :class:`ClientError` naming the entry that does not parse or
    the path that is not valid in the store.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ClientError(f"nix path-info did not print JSON: {exc}") from None
    infos: list[PathInfo] = []
    if isinstance(data, list):
        infos = [_one(entry, None, f"[{i}]") for i, entry in enumerate(data)]
    elif isinstance(data, dict):
        if "info" in data and isinstance(data["info"], dict) and "version" in data:
            data = data["info"]  # a versioned wrapper around the keyed object
        for key, entry in data.items():
            if not isinstance(key, str):
                raise _fail(repr(key), "keys must be store paths")
            info = _one(entry, key, repr(key))
            if _store_path(key, repr(key)) != info.path:
                raise _fail(repr(key), f"the entry is about {info.path}, not {key}")
            infos.append(info)
    else:
        raise ClientError(f"nix path-info printed JSON of type {type(data).__name__}, expected an array or object")
    result: dict[StorePath, PathInfo] = {}
    for info in infos:
        if result.setdefault(info.path, info) != info:
            raise _fail(str(info.path), "listed twice with different metadata")
    return result


def json_format_args(version_output: str) -> list[str]:
    """``--json-format 2`` for a Nix that wants it, from what its ``nix --version`` printed; else nothing."""
    match = _VERSION_RE.search(version_output)
    if match is None or "lix" in version_output.lower():
        return []
    version = (int(match.group(1)), int(match.group(2)))
    return ["--json-format", "2"] if version >= _JSON_FORMAT_SINCE else []


def path_info_argv(paths: Iterable[StorePath], store: LocalStore, json_format: Sequence[str] = ()) -> list[str]:
    """The ``nix path-info`` command line for the closure of ``paths``."""
    return [
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        *store.nix_args,
        "--json",
        *json_format,
        "--recursive",
        "--",
        *(p.path for p in paths),
    ]


async def _nix_version() -> str:
    """What ``nix --version`` prints ("" when it fails: then no version-specific flag is passed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "nix", "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise ClientError("the nix command was not found on PATH; niks3 push needs it") from None
    stdout, _ = await proc.communicate()
    return stdout.decode("utf-8", "replace") if proc.returncode == 0 else ""


async def _run_path_info(argv: list[str]) -> bytes:
    logger.debug("running %s", shlex.join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise ClientError("the nix command was not found on PATH; niks3 push needs it") from None
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ClientError(f"nix path-info failed (exit {proc.returncode}): {' / '.join(tail) or 'no message'}")
    return stdout


_CLOSURE_SQL = """
    WITH RECURSIVE closure(id) AS (
        SELECT id FROM ValidPaths WHERE path IN ({roots})
        UNION SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id)
    SELECT v.id, v.path, v.hash, v.narSize, v.deriver, v.ca, v.sigs FROM ValidPaths v
    WHERE v.id IN (SELECT id FROM closure)"""
_REFS_SQL = """
    WITH RECURSIVE closure(id) AS (
        SELECT id FROM ValidPaths WHERE path IN ({roots})
        UNION SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id)
    SELECT r.referrer, r.reference FROM Refs r WHERE r.referrer IN (SELECT id FROM closure)"""


def closure_from_db(db_path: Path, roots: Sequence[StorePath]) -> dict[StorePath, PathInfo] | None:
    """The closure of ``roots`` read from the store's SQLite database (``ValidPaths`` and ``Refs``, the tables
    ``nix path-info`` reads), in two statements; None when the database cannot be read as such (not there, not
    readable by this user, another schema, a root not valid, a NULL size), and then ``nix path-info`` answers.

    For 10,000 paths this takes about 50 ms, where Nix 2.8's ``nix path-info --json --recursive`` took 0.65 s of
    wall time (0.2 s of CPU: a query and a lock of the database per path) and its JSON as long to parse."""
    if not roots or len(roots) > _ARGV_BATCH or not db_path.exists():
        return None
    marks = ",".join("?" * len(roots))
    try:
        conn = sqlite3.connect(db_path.absolute().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        logger.debug("cannot open %s (%s); asking nix path-info", db_path, exc)
        return None
    try:
        # One read transaction, so that both statements see the same snapshot of the store (a nix-daemon that
        # adds or collects paths in between would otherwise leave the rows and their references disagreeing).
        conn.execute("BEGIN")
        rows = conn.execute(_CLOSURE_SQL.format(roots=marks), [r.path for r in roots]).fetchall()
        refs: dict[int, list[int]] = {}
        for referrer, ref in conn.execute(_REFS_SQL.format(roots=marks), [r.path for r in roots]):
            refs.setdefault(referrer, []).append(ref)
    except sqlite3.Error as exc:
        logger.debug("cannot read the closure from %s (%s); asking nix path-info", db_path, exc)
        return None
    finally:
        conn.close()
    # Each path is parsed once: the references are paths of the closure too.
    paths = {row[0]: _store_path(row[1], f"{db_path}: ValidPaths.path") for row in rows}
    closure: dict[StorePath, PathInfo] = {}
    for row_id, _, nar_hash, nar_size, deriver, ca, sigs in rows:
        path = paths[row_id]
        where = f"{db_path}: {path}"
        if nar_size is None or any(r not in paths for r in refs.get(row_id, ())):
            return None
        references = {paths[r].basename: paths[r] for r in refs.get(row_id, ())}
        closure[path] = PathInfo(
            path=path,
            nar_hash=_nar_hash(nar_hash, f"{where}.hash"),
            nar_size=_nar_size(nar_size, f"{where}.narSize"),
            references=tuple(references[k] for k in sorted(references)),
            deriver=_store_path(deriver, f"{where}.deriver") if deriver else None,
            ca=_content_address(ca or None, f"{where}.ca"),
            signatures=_signatures((sigs or "").split(), f"{where}.sigs"),
        )
    if any(root not in closure for root in roots):
        return None  # not valid: nix path-info says so in its own words
    return closure


async def query_closure(roots: Sequence[StorePath], store: LocalStore) -> dict[StorePath, PathInfo]:
    """The closure of ``roots`` with every path's metadata; checks that the closure is complete."""
    closure = await asyncio.to_thread(closure_from_db, store.db_path, roots)
    if closure is None:
        closure = {}
        json_format = json_format_args(await _nix_version())
        for start in range(0, len(roots), _ARGV_BATCH):
            argv = path_info_argv(roots[start : start + _ARGV_BATCH], store, json_format)
            closure.update(parse_path_info_json(await _run_path_info(argv)))
    for root in roots:
        if root not in closure:
            raise ClientError(f"nix path-info did not report {root}, which was asked for")
    for info in closure.values():
        for ref in info.references:
            if ref not in closure:
                raise ClientError(f"the closure is incomplete: {info.path} refers to {ref}, which nix did not report")
    return closure
