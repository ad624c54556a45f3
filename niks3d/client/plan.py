"""From a resolved closure to the session request, and from the server's answer to the work to do.

The request lists every path of the closure, sorted, with its metadata; its idempotency key is a digest of
that canonical body, so the same push started again (same roots, same closure, same logs) finds its open
session again and only uploads what was not reported, while a different push never collides with it. The
answer says, per path, whether it is cached and which objects to upload; :func:`plan_work` turns it into
one :class:`PathWork` per path, with every object to upload exactly once even when paths share a NAR.
"""

from __future__ import annotations

__all__ = ["PathWork", "SessionPlan", "idempotency_key", "plan_work", "session_body", "specs_to_work"]

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niks3d.client.closure import PathInfo
from niks3d.client.models import ObjectSpec, SessionAnswer
from niks3d.client.realisations import LocalRealisation
from niks3d.errors import ClientError
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.storepath import StorePath


def session_body(
    roots: Sequence[StorePath],
    closure: Mapping[StorePath, PathInfo],
    logs: Mapping[StorePath, Path],
    realisations: Mapping[StorePath, Sequence[LocalRealisation]],
    *,
    listing: bool = True,
    derivations: Mapping[StorePath, bytes] | None = None,
    build_traces: Mapping[StorePath, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /sessions`` without its idempotency key, in a canonical order.

    ``derivations`` holds the ``.drv`` file of each path whose log or realisations are pushed: the server accepts
    a log only with the derivation that proves it built the path (docs/security.md, rule 3), and gives a
    realisation its build-trace entry only if the derivation proves it is its own (rule 7). ``build_traces`` holds a Nix
    2.35 store's own build-trace entries of each path, as (drv basename, output).
    """
    paths = []
    for store_path in sorted(closure, key=lambda p: p.path):
        info = closure[store_path]
        paths.append(
            {
                "path": info.path.path,
                "nar_hash": format_sha256(info.nar_hash),
                "nar_size": info.nar_size,
                "references": sorted(r.path for r in info.references),
                "deriver": info.deriver.path if info.deriver else None,
                "ca": info.ca,
                "listing": listing,
                "log": store_path in logs,
                "realisations": [r.to_json() for r in sorted(realisations.get(store_path, ()), key=lambda r: r.id)],
            }
        )
        traces = (build_traces or {}).get(store_path)
        if traces:
            paths[-1]["build_trace"] = [{"drv_path": f"/nix/store/{d}", "output": o} for d, o in sorted(traces)]
        if derivations and store_path in derivations:
            paths[-1]["derivation"] = base64.b64encode(derivations[store_path]).decode()
    return {"roots": sorted({r.path for r in roots}), "paths": paths}


def idempotency_key(body: Mapping[str, Any]) -> str:
    """``push-<sha256 hex>`` of the canonical JSON of ``body`` (without any key of its own)."""
    content = {k: v for k, v in body.items() if k != "idempotency_key"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "push-" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class PathWork:
    """What to upload for one store path: its NAR, listing and log specs (None: nothing to do for it)."""

    info: PathInfo
    nar: ObjectSpec | None = None
    ls: ObjectSpec | None = None
    log: ObjectSpec | None = None
    log_file: Path | None = None

    @property
    def empty(self) -> bool:
        """Whether nothing is to be uploaded for this path."""
        return self.nar is None and self.ls is None and self.log is None

    @property
    def needs_nar_pass(self) -> bool:
        """Whether the NAR must be read: to upload it, or to render the listing."""
        return self.nar is not None or self.ls is not None


@dataclass
class SessionPlan:
    """The work of one session: per path, and which keys belong to which path (for later re-uploads)."""

    work: list[PathWork]
    cached: list[StorePath]
    present: list[StorePath]  # paths the server asked nothing for, though not yet published
    key_paths: dict[str, StorePath] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)  # key -> reason, for objects with action none

    @property
    def nar_bytes(self) -> int:
        """NAR bytes to read in this plan."""
        return sum(w.info.nar_size for w in self.work if w.needs_nar_pass)


def _store_path(text: str) -> StorePath:
    try:
        return StorePath.parse(text)
    except NixFormatError as exc:
        raise ClientError(f"the server's answer names an invalid store path: {exc}") from None


def _assign(work: PathWork, spec: ObjectSpec, logs: Mapping[StorePath, Path]) -> None:
    if spec.kind == "nar":
        work.nar = spec
    elif spec.kind == "ls":
        work.ls = spec
    elif spec.kind == "log":
        log_file = logs.get(work.info.path)
        if log_file is None:
            raise ClientError(f"the server asks for the build log of {work.info.path}, which this push did not offer")
        work.log, work.log_file = spec, log_file
    else:
        raise ClientError(f"the server asks to upload a {spec.kind!r} object ({spec.key}), which this client cannot")


def specs_to_work(
    specs: Sequence[ObjectSpec],
    closure: Mapping[StorePath, PathInfo],
    logs: Mapping[StorePath, Path],
    key_paths: Mapping[str, StorePath],
) -> list[PathWork]:
    """Work for fresh upload specs (from a ``422 objects_missing``), found through the keys' paths."""
    by_path: dict[StorePath, PathWork] = {}
    for spec in specs:
        if spec.action == "none":
            continue
        path = key_paths.get(spec.key)
        if path is None or path not in closure:
            raise ClientError(f"the server asks for {spec.key}, which belongs to no path of this push")
        _assign(by_path.setdefault(path, PathWork(closure[path])), spec, logs)
    return list(by_path.values())


def plan_work(
    answer: SessionAnswer, closure: Mapping[StorePath, PathInfo], logs: Mapping[StorePath, Path]
) -> SessionPlan:
    """Turn the session answer into work, checking that it is about the paths of this push."""
    plan = SessionPlan(work=[], cached=[], present=[])
    scheduled: set[str] = set()
    for entry in answer.paths:
        path = _store_path(entry.path)
        info = closure.get(path)
        if info is None:
            raise ClientError(f"the server's answer names {path}, which is not part of this push")
        work = PathWork(info)
        if entry.status == "cached":
            plan.cached.append(path)
            # the server may ask for the proven log of a cached path whose log in the cache is not (rule 3)
            for spec in entry.objects:
                if spec.kind == "log" and spec.action != "none" and spec.key not in scheduled:
                    plan.key_paths.setdefault(spec.key, path)
                    scheduled.add(spec.key)
                    _assign(work, spec, logs)
            if not work.empty:
                plan.work.append(work)
            continue
        for spec in entry.objects:
            plan.key_paths.setdefault(spec.key, path)
            if spec.action == "none":
                plan.waiting[spec.key] = spec.reason or "present"
                continue
            if spec.key in scheduled:
                continue  # another path with the same NAR uploads it
            scheduled.add(spec.key)
            _assign(work, spec, logs)
        if work.empty:
            plan.present.append(path)
        else:
            plan.work.append(work)
    plan.work.sort(key=lambda w: (-w.info.nar_size if w.needs_nar_pass else 0, w.info.path.path))
    return plan
