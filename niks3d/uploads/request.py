"""Validation of push requests: JSON bodies become typed, fully validated domain values or a 400 naming the field.

Every store path, hash, bucket key and name is checked here, before anything reaches SQL, S3 or a log line.
"""

from __future__ import annotations

__all__ = [
    "MAX_PATHS_PER_SESSION",
    "ObjectReport",
    "PathRequest",
    "PreparedSession",
    "RealisationRequest",
    "SessionRequest",
    "UpstreamPath",
    "parse_object_reports",
    "parse_session_request",
    "parse_url_request",
    "reference_levels",
]

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from niks3d.errors import InvalidRequest
from niks3d.heap import built, settle
from niks3d.nix.bucketkeys import parse_bucket_key
from niks3d.nix.derivation import MAX_DERIVATION_BYTES
from niks3d.nix.errors import InvalidStorePath, NixFormatError
from niks3d.nix.hashes import format_sha256, parse_sha256
from niks3d.nix.realisation import parse_realisation_id
from niks3d.nix.signing import parse_signature
from niks3d.nix.storepath import StorePath, validate_name
from niks3d.sortpieces import sorted_in_pieces
from niks3d.storage.multipart import MAX_PART_NUMBER
from niks3d.uploads.drvproof import prove_derivation
from niks3d.uploads.plan import ObjectPlan, names_wanted, proven_logs

MAX_PATHS_PER_SESSION = 100_000
MAX_REFERENCES = 10_000
MAX_PARTS = MAX_PART_NUMBER  # S3's limit (storage/multipart.py)
MAX_SIGNATURES = 16
_IDEMPOTENCY_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_CA_RE = re.compile(r"(?:fixed:(?:r:|git:)?|text:)(?:sha256|sha1|sha512|md5):[0-9A-Za-z+/=]{16,128}")


def _bad(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}")


def _object(value: object, where: str, fields: Mapping[str, bool]) -> dict[str, Any]:
    """Check that ``value`` is a JSON object with only known ``fields`` (name -> required)."""
    if not isinstance(value, dict):
        raise _bad(where, f"must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _bad(where, f"unknown field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(name for name, required in fields.items() if required and name not in value)
    if missing:
        raise _bad(where, f"missing field(s) {', '.join(map(repr, missing))}")
    return value


def _list(value: object, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(where, f"must be a JSON array, got {type(value).__name__}")
    if len(value) > limit:
        raise _bad(where, f"has {len(value)} entries, the limit is {limit}")
    return value


def _store_path(value: object, where: str) -> StorePath:
    """A full store path or a basename."""
    if not isinstance(value, str):
        raise _bad(where, f"must be a store path string, got {type(value).__name__}")
    try:
        return StorePath.parse(value) if value.startswith("/") else StorePath.from_basename(value)
    except NixFormatError as exc:
        raise _bad(where, str(exc)) from None


def _int(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"must be an integer, got {type(value).__name__}")
    if value < minimum or value > 2**62:
        raise _bad(where, f"{value} is out of range")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, f"must be true or false, got {type(value).__name__}")
    return value


def _hash(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(where, f"must be a hash string, got {type(value).__name__}")
    try:
        return parse_sha256(value)
    except NixFormatError as exc:
        raise _bad(where, str(exc)) from None


@dataclass(frozen=True, slots=True)
class RealisationRequest:
    id: str
    out_path: StorePath
    dependent_realisations: tuple[tuple[str, str], ...]  # (id, basename), sorted


@dataclass(frozen=True, slots=True)
class PathRequest:
    path: StorePath
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...]  # sorted by basename, unique
    deriver: StorePath | None
    ca: str | None
    listing: bool
    log: bool
    realisations: tuple[RealisationRequest, ...]
    derivation: bytes | None = None  # the deriver's .drv file, sent as the proof for a build log
    # Nix 2.35's build-trace entries of a 2.35 store naming this path: (drv basename, output name), sorted.
    build_trace: tuple[tuple[str, str], ...] = ()
    # Why the build log is refused, or None when the derivation proves it (docs/security.md, rule 3).
    log_refused: str | None = None
    # For the log of a floating content-addressed deriver: the build-trace key that must name this path (drvproof.py).
    log_binding: str | None = None
    # The ids of the realisations that are the deriver's, proven by the .drv: they get a build-trace entry (rule 7).
    deriver_ids: tuple[str, ...] = ()

    @property
    def log_proven(self) -> bool:
        return self.log and self.log_refused is None

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = (
            {"derivation": base64.b64encode(self.derivation).decode()} if self.derivation is not None else {}
        )
        if self.build_trace:  # absent when empty: requests stored before the field keep their fingerprint
            extra["build_trace"] = [{"drv_path": f"/nix/store/{d}", "output": o} for d, o in self.build_trace]
        return {
            **extra,
            "path": self.path.path,
            "nar_hash": format_sha256(self.nar_hash),
            "nar_size": self.nar_size,
            "references": [r.path for r in self.references],
            "deriver": self.deriver.path if self.deriver else None,
            "ca": self.ca,
            "listing": self.listing,
            "log": self.log,
            "realisations": [
                {
                    "id": r.id,
                    "out_path": r.out_path.path,
                    "dependent_realisations": dict(r.dependent_realisations),
                }
                for r in self.realisations
            ],
        }


@dataclass(frozen=True, slots=True)
class UpstreamPath:
    """A reference the push does not upload: its upstream facts and the signatures that should prove them."""

    path: StorePath
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...]  # sorted by basename, unique
    signatures: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path.path,
            "nar_hash": format_sha256(self.nar_hash),
            "nar_size": self.nar_size,
            "references": [r.path for r in self.references],
            "signatures": list(self.signatures),
        }


@dataclass(frozen=True, slots=True)
class SessionRequest:
    idempotency_key: str | None
    roots: tuple[StorePath, ...]
    paths: tuple[PathRequest, ...]
    upstream: tuple[UpstreamPath, ...] = ()  # sorted by hash part
    # hash part -> store path of every path and reference (the names the cache must not hold under another name),
    # the hash parts of the paths, and the references that are neither paths nor upstream (must be published
    # here), in hash order: worked out with the parse, off the event loop, what every open checks
    names: Mapping[str, StorePath] = field(init=False, repr=False, compare=False)
    hashes: frozenset[str] = field(init=False, repr=False, compare=False)
    outside: tuple[tuple[str, StorePath], ...] = field(init=False, repr=False, compare=False)
    # path hash -> log key of the paths whose log comes with its proof (uploads/plan.py)
    proven_logs: Mapping[str, str] = field(init=False, repr=False, compare=False)
    # What the paths need in the bucket, worked out once and asked by every step of the push instead of working
    # it out again (uploads/plan.py).
    _plan: ObjectPlan | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hashes = frozenset(p.path.hash for p in self.paths)
        known = hashes | {u.path.hash for u in self.upstream}
        outside = {r.hash: r for p in self.paths for r in p.references if r.hash not in known}
        object.__setattr__(self, "names", names_wanted(self.paths))
        object.__setattr__(self, "hashes", hashes)
        object.__setattr__(self, "outside", tuple(sorted_in_pieces(outside.items())))
        object.__setattr__(self, "proven_logs", proven_logs(self.paths))

    @property
    def plan(self) -> ObjectPlan:
        """The object plan, worked out on first use: for 100,000 paths that is seconds of CPU, so the daemon
        asks for it in a worker thread first (uploads/open.py, uploads/context.py); a push of cached paths only
        never needs it."""
        if self._plan is None:
            object.__setattr__(self, "_plan", ObjectPlan.of(self.paths, self.upstream))
        assert self._plan is not None
        return self._plan

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "idempotency_key": self.idempotency_key,
            "roots": [r.path for r in self.roots],
            "paths": [p.to_json() for p in self.paths],
        }
        if self.upstream:  # absent when empty: the digests of requests without it stay what they were
            body["upstream"] = [u.to_json() for u in self.upstream]
        return body

    def fingerprint(self) -> str:
        """A digest of the request's content, to tell an idempotent repeat from a different request."""
        return self.encoded()[0]

    def encoded(self) -> tuple[str, str]:
        """(:meth:`fingerprint`, the request as the JSON text stored with its session): the text of
        :meth:`to_json`, each path's dict made only while it is written (100,000 of them at once would be walked by
        every garbage collection meanwhile: niks3d/heap.py). For a large push this is a second or more of CPU:
        callers run it in a worker thread (issue 20)."""
        body: dict[str, Any] = {
            "idempotency_key": self.idempotency_key,
            "roots": [r.path for r in self.roots],
            "paths": _Each(self.paths),
        }
        if self.upstream:  # as in to_json
            body["upstream"] = _Each(self.upstream)
        digest = hashlib.sha256(_dumps_in_pieces(body, sort_keys=True).encode()).hexdigest()
        return digest, _dumps_in_pieces(body, sort_keys=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionRequest:
        """Rebuild a stored (already validated) request."""
        return parse_session_request(dict(data))

    @classmethod
    def from_text(cls, text: str) -> SessionRequest:
        """Rebuild a stored request from its JSON text (``upload_sessions.request``)."""
        data = json.loads(text, parse_int=_json_int)
        if not isinstance(data, dict):
            raise InvalidRequest("the stored request is not a JSON object")
        request = cls.from_json(data)
        request.plan  # noqa: B018 - worked out here, in the caller's worker thread (uploads/context.py)
        settle()
        return request


@dataclass(frozen=True, slots=True)
class _Each:
    """A JSON array of the ``to_json()`` of each item, made one by one as :func:`_dumps_in_pieces` writes it."""

    items: tuple[PathRequest, ...] | tuple[UpstreamPath, ...]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (item.to_json() for item in self.items)


def _dumps_in_pieces(body: Mapping[str, Any], *, sort_keys: bool) -> str:
    """``json.dumps(body, sort_keys=sort_keys, separators=(",", ":"))``, the same text, made element by element
    of the lists in ``body``.

    One ``json.dumps`` of 100,000 paths is C code that holds the GIL for the whole document (a few hundred ms):
    even in a worker thread, the event loop's thread would wait that long. Between elements it can take the GIL.
    """

    def one(value: object) -> str:
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"))

    items = sorted(body.items()) if sort_keys else list(body.items())
    fields = []
    for name, value in items:
        text = "[" + ",".join(one(v) for v in value) + "]" if isinstance(value, list | _Each) else one(value)
        fields.append(f"{one(name)}:{text}")
    return "{" + ",".join(fields) + "}"


def _json_int(text: str) -> int:
    # A Python function rather than ``int``: each call is a point where another thread (the event loop's) can take
    # the GIL, so that a worker thread's json.loads of tens of MiB does not hold it for the whole document; and
    # where what the scanner built so far leaves the garbage collector's walks (niks3d/heap.py).
    built()
    return int(text)


@dataclass(frozen=True, slots=True)
class PreparedSession:
    """A validated ``POST /sessions`` body with what storing it needs, all computed off the event loop."""

    request: SessionRequest
    digest: str  # SessionRequest.fingerprint()
    stored: str  # the JSON text stored in upload_sessions.request

    @classmethod
    def of(cls, body: object) -> PreparedSession:
        """Validate ``body`` and encode it: CPU work only, meant for a worker thread (server/sessions.py)."""
        request = parse_session_request(body)
        digest, stored = request.encoded()
        settle()
        return cls(request, digest, stored)


def _parse_realisation(value: object, where: str) -> RealisationRequest:
    obj = _object(value, where, {"id": True, "out_path": True, "dependent_realisations": False})
    rid = obj["id"]
    try:
        parse_realisation_id(rid)
    except NixFormatError as exc:
        raise _bad(f"{where}.id", str(exc)) from None
    deps_raw = obj.get("dependent_realisations") or {}
    if not isinstance(deps_raw, dict):
        raise _bad(f"{where}.dependent_realisations", "must be a JSON object")
    deps: list[tuple[str, str]] = []
    for dep_id, dep_path in deps_raw.items():
        try:
            parse_realisation_id(dep_id)
        except NixFormatError as exc:
            raise _bad(f"{where}.dependent_realisations", str(exc)) from None
        deps.append((dep_id, _store_path(dep_path, f"{where}.dependent_realisations[{dep_id!r}]").basename))
    return RealisationRequest(rid, _store_path(obj["out_path"], f"{where}.out_path"), tuple(sorted(deps)))


def _parse_build_trace(value: object, where: str) -> tuple[str, str]:
    """``{"drv_path": "/nix/store/<hash>-<name>.drv", "output": "<name>"}``: an entry whose value is this path."""
    obj = _object(value, where, {"drv_path": True, "output": True})
    drv = _store_path(obj["drv_path"], f"{where}.drv_path")
    if not drv.is_derivation:
        raise _bad(f"{where}.drv_path", f"{drv.path} is not a derivation (.drv)")
    output = obj["output"]
    if not isinstance(output, str):
        raise _bad(f"{where}.output", f"must be a string, got {type(output).__name__}")
    try:
        validate_name(output, "output name")
    except InvalidStorePath as exc:
        raise _bad(f"{where}.output", str(exc)) from None
    return drv.basename, output


def _parse_path(value: object, where: str) -> PathRequest:
    obj = _object(
        value,
        where,
        {
            "path": True,
            "nar_hash": True,
            "nar_size": True,
            "references": True,
            "deriver": False,
            "ca": False,
            "listing": False,
            "log": False,
            "realisations": False,
            "derivation": False,
            "build_trace": False,
        },
    )
    path = _store_path(obj["path"], f"{where}.path")
    refs_raw = _list(obj["references"], f"{where}.references", MAX_REFERENCES)
    refs = {}
    for i, raw in enumerate(refs_raw):
        ref = _store_path(raw, f"{where}.references[{i}]")
        refs[ref.basename] = ref
    deriver = None
    if obj.get("deriver") is not None:
        deriver = _store_path(obj["deriver"], f"{where}.deriver")
        if not deriver.is_derivation:
            raise _bad(f"{where}.deriver", f"{deriver.path} is not a derivation (.drv)")
    ca = obj.get("ca")
    if ca is not None and (not isinstance(ca, str) or not _CA_RE.fullmatch(ca)):
        raise _bad(f"{where}.ca", f"{str(ca)[:80]!r} is not a content address such as 'fixed:r:sha256:<hash>'")
    log = _bool(obj.get("log", False), f"{where}.log")
    if log and deriver is None:
        raise _bad(f"{where}.log", "a build log needs the path's deriver")
    realisations = tuple(
        _parse_realisation(r, f"{where}.realisations[{i}]")
        for i, r in enumerate(_list(obj.get("realisations", []), f"{where}.realisations", 64))
    )
    for r in realisations:
        if r.out_path != path:
            raise _bad(f"{where}.realisations", f"realisation {r.id} points to {r.out_path.path}, not to {path.path}")
    build_trace = tuple(
        sorted(
            {
                _parse_build_trace(t, f"{where}.build_trace[{i}]")
                for i, t in enumerate(_list(obj.get("build_trace", []), f"{where}.build_trace", 64))
            }
        )
    )
    derivation = None
    if obj.get("derivation") is not None:
        derivation = _base64(obj["derivation"], f"{where}.derivation", MAX_DERIVATION_BYTES)
    proof = prove_derivation(path, deriver, derivation, tuple(r.id for r in realisations), build_trace, log=log)
    return PathRequest(
        path=path,
        nar_hash=_hash(obj["nar_hash"], f"{where}.nar_hash"),
        nar_size=_int(obj["nar_size"], f"{where}.nar_size", 1),
        references=tuple(refs[k] for k in sorted(refs)),
        deriver=deriver,
        ca=ca,
        listing=_bool(obj.get("listing", True), f"{where}.listing"),
        log=log,
        realisations=realisations,
        derivation=derivation,
        build_trace=build_trace,
        log_refused=proof.log_refused,
        log_binding=proof.log_binding,
        deriver_ids=proof.deriver_ids,
    )


def _base64(value: object, where: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * (limit // 3 + 1):
        raise _bad(where, f"must be a base64 string of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _bad(where, "is not valid base64") from None


def _references(value: object, where: str) -> tuple[StorePath, ...]:
    refs = {}
    for i, raw in enumerate(_list(value, where, MAX_REFERENCES)):
        ref = _store_path(raw, f"{where}[{i}]")
        refs[ref.basename] = ref
    return tuple(refs[k] for k in sorted(refs))


def _parse_upstream(value: object, where: str) -> UpstreamPath:
    obj = _object(
        value, where, {"path": True, "nar_hash": True, "nar_size": True, "references": True, "signatures": True}
    )
    signatures = _list(obj["signatures"], f"{where}.signatures", MAX_SIGNATURES)
    if not signatures:
        raise _bad(f"{where}.signatures", "must not be empty: an upstream path is proven by its signature")
    for i, sig in enumerate(signatures):
        try:
            parse_signature(sig)
        except NixFormatError as exc:
            raise _bad(f"{where}.signatures[{i}]", str(exc)) from None
    return UpstreamPath(
        path=_store_path(obj["path"], f"{where}.path"),
        nar_hash=_hash(obj["nar_hash"], f"{where}.nar_hash"),
        nar_size=_int(obj["nar_size"], f"{where}.nar_size", 1),
        references=_references(obj["references"], f"{where}.references"),
        signatures=tuple(sorted(set(signatures))),
    )


def _parse_upstreams(value: object, paths: Mapping[str, PathRequest]) -> tuple[UpstreamPath, ...]:
    """The ``upstream`` entries: each a reference of a path of the request that the request does not push."""
    referenced = {r.hash: r for p in paths.values() for r in p.references}
    upstream: dict[str, UpstreamPath] = {}
    for i, raw in enumerate(_list(value, "upstream", MAX_PATHS_PER_SESSION)):
        built()
        u = _parse_upstream(raw, f"upstream[{i}]")
        if u.path.hash in paths:
            raise _bad(f"upstream[{i}].path", f"{u.path.path} is one of the paths of this push; it cannot be upstream")
        if u.path.hash in upstream:
            raise _bad(f"upstream[{i}].path", f"{u.path.path} is listed twice (or its hash part is)")
        if referenced.get(u.path.hash) != u.path:
            raise _bad(f"upstream[{i}].path", f"{u.path.path} is not a reference of any path of this push")
        upstream[u.path.hash] = u
    return tuple(upstream[k] for k in sorted_in_pieces(upstream))


def parse_session_request(body: object) -> SessionRequest:
    """Validate the body of ``POST /api/v1/sessions``."""
    obj = _object(body, "request", {"idempotency_key": False, "roots": True, "paths": True, "upstream": False})
    key = obj.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not _IDEMPOTENCY_RE.fullmatch(key)):
        raise _bad("idempotency_key", "must match [A-Za-z0-9._-]{1,128}")
    paths_raw = _list(obj["paths"], "paths", MAX_PATHS_PER_SESSION)
    if not paths_raw:
        raise _bad("paths", "must not be empty")
    paths: dict[str, PathRequest] = {}
    for i, raw in enumerate(paths_raw):
        built()  # out of the garbage collector's walks, every so many (niks3d/heap.py)
        p = _parse_path(raw, f"paths[{i}]")
        if p.path.hash in paths:
            raise _bad(f"paths[{i}].path", f"{p.path.path} is listed twice (or its hash part is)")
        paths[p.path.hash] = p
    roots_raw = _list(obj["roots"], "roots", MAX_PATHS_PER_SESSION)
    roots: dict[str, StorePath] = {}
    for i, raw in enumerate(roots_raw):
        root = _store_path(raw, f"roots[{i}]")
        known = paths.get(root.hash)
        if known is None or known.path != root:
            raise _bad(f"roots[{i}]", f"{root.path} is not one of the paths of this request")
        roots[root.hash] = root
    return SessionRequest(
        idempotency_key=key,
        roots=tuple(roots[k] for k in sorted_in_pieces(roots)),
        paths=tuple(paths[k] for k in sorted_in_pieces(paths)),  # 100,000 of them: niks3d/sortpieces.py
        upstream=_parse_upstreams(obj.get("upstream", []), paths),
    )


@dataclass(frozen=True, slots=True)
class ObjectReport:
    key: str
    file_size: int
    file_hash: bytes | None


def parse_object_reports(body: object, *, optional: bool) -> dict[str, ObjectReport]:
    """Validate ``{"objects": {key: {"file_size": N, "file_hash": "sha256:..."}}}``."""
    if optional and body is None:
        return {}
    obj = _object(body, "request", {"objects": not optional})
    raw = obj.get("objects", {})
    if not isinstance(raw, dict):
        raise _bad("objects", "must be a JSON object keyed by bucket key")
    if len(raw) > 4 * MAX_PATHS_PER_SESSION:
        raise _bad("objects", "too many objects")
    reports: dict[str, ObjectReport] = {}
    for key, value in raw.items():
        where = f"objects[{key[:200]!r}]"
        try:
            bucket_key = parse_bucket_key(key)
        except NixFormatError as exc:
            raise _bad(where, str(exc)) from None
        if bucket_key.kind not in ("nar", "ls", "log"):
            raise _bad(where, f"{bucket_key.kind} objects are written by the server, not uploaded")
        fields = _object(value, where, {"file_size": True, "file_hash": bucket_key.kind == "nar"})
        file_hash = _hash(fields["file_hash"], f"{where}.file_hash") if "file_hash" in fields else None
        reports[key] = ObjectReport(key, _int(fields["file_size"], f"{where}.file_size", 1), file_hash)
    return reports


def parse_url_request(body: object) -> dict[str, tuple[int, ...]]:
    """Validate ``{"objects": [{"key": ..., "parts": [n, ...]}]}`` into key -> part numbers."""
    obj = _object(body, "request", {"objects": True})
    wanted: dict[str, tuple[int, ...]] = {}
    for i, raw in enumerate(_list(obj["objects"], "objects", 4 * MAX_PATHS_PER_SESSION)):
        item = _object(raw, f"objects[{i}]", {"key": True, "parts": False})
        key = item["key"]
        try:
            parse_bucket_key(key)
        except (NixFormatError, TypeError) as exc:
            raise _bad(f"objects[{i}].key", str(exc)) from None
        parts = _list(item.get("parts", []), f"objects[{i}].parts", 1000)
        numbers = tuple(sorted({_int(n, f"objects[{i}].parts", 1) for n in parts}))
        if numbers and numbers[-1] > MAX_PARTS:
            raise _bad(f"objects[{i}].parts", f"part numbers go from 1 to {MAX_PARTS}")
        wanted[key] = numbers
    return wanted


def reference_levels(paths: list[PathRequest]) -> list[list[PathRequest]]:
    """Group paths so that each path comes after every referenced path of the same group (references first)."""
    by_hash = {p.path.hash: p for p in paths}
    depth: dict[str, int] = {}

    def level(h: str, trail: frozenset[str]) -> int:
        if h in depth:
            return depth[h]
        refs = [r.hash for r in by_hash[h].references if r.hash in by_hash and r.hash != h]
        if any(r in trail for r in refs):
            raise InvalidRequest(f"reference cycle through {by_hash[h].path.path}")
        depth[h] = 1 + max((level(r, trail | {h}) for r in refs), default=-1)
        return depth[h]

    for h in sorted(by_hash):
        level(h, frozenset())
    groups: list[list[PathRequest]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for h in sorted(by_hash):
        groups[depth[h]].append(by_hash[h])
    return groups
