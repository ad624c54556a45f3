"""The object plan of a push: which bucket keys a session's request needs, worked out once and carried with the
request (:mod:`niks3d.uploads.request`).

Opening a session, the pages of its answer, URL refreshes, reports, multipart uploads, ``complete`` and abort all
ask the same questions of a request: which objects each path needs, which of them the client uploads, whose NAR a
key is, which keys publication locks. Each of them used to work the answers out again from the paths, in seven
places; for a session of 100,000 paths every one of those loops is a good part of a second of CPU. The request is
parsed in a worker thread (server/sessions.py, uploads/context.py); the plan is worked out on first use, which
the daemon makes in a worker thread too (uploads/open.py), and a push of cached paths only never needs it.
"""

from __future__ import annotations

__all__ = ["ObjectPlan", "names_wanted", "proven_logs"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from niks3d.heap import built
from niks3d.nix.bucketkeys import log_key, ls_key
from niks3d.sortpieces import sorted_in_pieces
from niks3d.uploads.objects import WantedObject, wanted_objects

if TYPE_CHECKING:
    from niks3d.nix.storepath import StorePath
    from niks3d.uploads.request import PathRequest, UpstreamPath


def proven_logs(paths: Sequence[PathRequest]) -> dict[str, str]:
    """path hash -> its log key, of the paths whose log comes with its proof: if such a path is published and its
    log there is not proven, the push may replace it (rule 3)."""
    return {p.path.hash: log_key(p.deriver.basename) for p in paths if p.deriver is not None and p.log_proven}


def names_wanted(paths: Sequence[PathRequest]) -> dict[str, StorePath]:
    """hash part -> store path, of every path and every reference."""
    wanted = {p.path.hash: p.path for p in paths}
    for p in paths:
        for r in p.references:
            wanted.setdefault(r.hash, r)
    return wanted


@dataclass(frozen=True, slots=True)
class ObjectPlan:
    """What the paths of one request need in the bucket, whatever is published by now."""

    # path hash -> the objects the path needs unless it is published (its narinfo first), in the request's order
    objects: Mapping[str, tuple[WantedObject, ...]]
    # key -> object, of every object a client uploads (NARs, listings, logs), in key order
    uploads: Mapping[str, WantedObject]
    # NAR key -> the path whose NAR it is (the first, in the request's order, when two paths have one NAR)
    nars: Mapping[str, PathRequest]
    # references that are neither paths of the request nor upstream, by hash part, in hash order: they must be
    # published here already
    outside: tuple[tuple[str, StorePath], ...]
    # hash part -> store path, of every path and reference (names_wanted): the names publication must not clash with
    names: Mapping[str, StorePath]
    # the keys publication locks, in key order: the narinfo of every path and every realisation (rule 7), and
    # every path's listing (rule 8)
    publication_locks: tuple[str, ...]
    # path hash -> the key of its listing, whether it asked for one or not (rule 8)
    listings: Mapping[str, str]
    # log key -> (build-trace key, store path) of each path whose log it is by a floating content-addressed
    # derivation's realisation: the log counts only if one of them is published for its path (rule 3)
    log_bindings: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, paths: Sequence[PathRequest], upstream: Sequence[UpstreamPath]) -> ObjectPlan:
        objects: dict[str, tuple[WantedObject, ...]] = {}
        for p in paths:
            built()  # out of the garbage collector's walks, every so many (niks3d/heap.py)
            objects[p.path.hash] = tuple(wanted_objects(p, published=False))
        uploads: dict[str, WantedObject] = {}
        nars: dict[str, PathRequest] = {}
        listings = {p.path.hash: ls_key(p.path.hash) for p in paths}
        locks: set[str] = set(listings.values())
        for p in paths:
            for o in objects[p.path.hash]:
                if o.client_uploads:
                    uploads.setdefault(o.key, o)
                if o.kind == "nar":
                    nars.setdefault(o.key, p)
                elif o.kind in ("narinfo", "realisation"):
                    locks.add(o.key)
        bindings: dict[str, set[tuple[str, str]]] = {}
        for p in paths:
            if p.deriver is not None and p.log_proven and p.log_binding is not None:
                bindings.setdefault(log_key(p.deriver.basename), set()).add((p.log_binding, p.path.path))
        in_request = set(objects) | {u.path.hash for u in upstream}
        outside = {r.hash: r for p in paths for r in p.references if r.hash not in in_request}
        return cls(
            objects=objects,
            uploads=dict(sorted_in_pieces(uploads.items())),
            nars=nars,
            outside=tuple(sorted_in_pieces(outside.items())),
            names=names_wanted(paths),
            publication_locks=tuple(sorted_in_pieces(locks)),
            listings=listings,
            log_bindings={k: tuple(sorted(v)) for k, v in sorted(bindings.items())},
        )

    def client_uploads(self, path_hash: str) -> list[WantedObject]:
        """The objects of one path that its client uploads, if the path is not published."""
        return [o for o in self.objects[path_hash] if o.client_uploads]

    def large_nars(self, threshold: int) -> list[str]:
        """The keys of the NARs of at least ``threshold`` bytes (uncompressed), in key order: uploaded in parts."""
        return [k for k, o in self.uploads.items() if o.kind == "nar" and o.nar_size >= threshold]
