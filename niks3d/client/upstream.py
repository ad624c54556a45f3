"""The upstream filter of ``niks3 push``: paths an upstream cache signed are not uploaded (docs/client.md).

A path of the closure whose local store signatures include one that verifies, over the path's own NarHash,
NarSize and references, with an upstream key (the server's ``cache.upstream_keys``, or ``--upstream-key``) is
left to that upstream cache. The push then holds the paths reachable from the roots without passing through such
a path; every upstream path they reference goes into the request's ``upstream`` with the verified signatures, so
the server can check the proof itself (docs/api.md, upstream references).
"""

from __future__ import annotations

__all__ = ["UpstreamSplit", "choose_keys", "split_upstream", "upstream_entries"]

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from niks3d.client.closure import PathInfo
from niks3d.client.models import ServerInfo
from niks3d.errors import ClientError
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.signing import PublicKey, fingerprint, parse_signature
from niks3d.nix.storepath import StorePath

logger = logging.getLogger(__name__)


def _parse_keys(texts: Iterable[str], where: str) -> tuple[PublicKey, ...]:
    keys = []
    for text in texts:
        try:
            keys.append(PublicKey.parse(text))
        except NixFormatError as exc:
            raise ClientError(f"{where}: {exc}") from None
    return tuple(keys)


def choose_keys(info: ServerInfo, override: Sequence[str], *, enabled: bool) -> tuple[PublicKey, ...]:
    """The keys to filter by: none when disabled or when the server takes no upstream references, else
    ``--upstream-key`` if given, else the server's ``upstream_keys``."""
    if not enabled:
        return ()
    if "upstream" not in info.capabilities:
        if override:
            logger.warning("the server takes no upstream references; pushing every path")
        return ()
    if override:
        return _parse_keys(override, "--upstream-key")
    return _parse_keys(info.upstream_keys, "the server's upstream_keys")


def _proofs(info: PathInfo, keys: Mapping[str, PublicKey]) -> tuple[str, ...]:
    """The signatures of ``info`` that verify with one of ``keys``."""
    named = []
    for sig in info.signatures:
        try:
            name, _ = parse_signature(sig)
        except NixFormatError:
            continue
        if name in keys:
            named.append((keys[name], sig))
    if not named:
        return ()
    message = fingerprint(info.path.path, info.nar_hash, info.nar_size, [r.path for r in info.references])
    return tuple(sig for key, sig in named if key.verify(sig, message))


@dataclass(frozen=True)
class UpstreamSplit:
    """The closure split in what to push and what upstream serves."""

    pushed: dict[StorePath, PathInfo]
    roots: tuple[StorePath, ...]  # the roots that are pushed
    referenced: dict[StorePath, tuple[str, ...]]  # upstream paths the pushed ones reference -> verified sigs
    upstream: tuple[StorePath, ...]  # every path of the closure left to upstream, sorted

    def upstream_nar_bytes(self, closure: Mapping[StorePath, PathInfo]) -> int:
        return sum(closure[p].nar_size for p in self.upstream)


def split_upstream(
    roots: Sequence[StorePath], closure: Mapping[StorePath, PathInfo], keys: Sequence[PublicKey]
) -> UpstreamSplit:
    """Which paths to push: those reachable from the roots without going through an upstream-signed path."""
    if not keys:
        return UpstreamSplit(dict(closure), tuple(roots), {}, ())
    by_name = {k.name: k for k in keys}
    proofs = {path: sigs for path, info in closure.items() if (sigs := _proofs(info, by_name))}
    pushed: dict[StorePath, PathInfo] = {}
    referenced: dict[StorePath, tuple[str, ...]] = {}
    todo = [r for r in roots if r not in proofs]
    while todo:
        path = todo.pop()
        if path in pushed:
            continue
        info = pushed[path] = closure[path]
        for ref in info.references:
            if ref in proofs:
                referenced[ref] = proofs[ref]
            elif ref not in pushed:
                todo.append(ref)
    upstream = tuple(sorted((p for p in closure if p not in pushed), key=lambda p: p.path))
    return UpstreamSplit(pushed, tuple(r for r in roots if r not in proofs), referenced, upstream)


def upstream_entries(split: UpstreamSplit, closure: Mapping[StorePath, PathInfo]) -> list[dict[str, Any]]:
    """The request's ``upstream``: the facts and verified signatures of each referenced upstream path."""
    entries = []
    for path in sorted(split.referenced, key=lambda p: p.path):
        info = closure[path]
        entries.append(
            {
                "path": path.path,
                "nar_hash": format_sha256(info.nar_hash),
                "nar_size": info.nar_size,
                "references": sorted(r.path for r in info.references),
                "signatures": list(split.referenced[path]),
            }
        )
    return entries
