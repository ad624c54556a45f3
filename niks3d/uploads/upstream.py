"""Upstream references: paths a push leans on instead of uploading them, proven by an upstream cache's signature.

A push names them in ``upstream`` with the facts Nix signs (NarHash, NarSize, references) and the signatures its
store holds. niks3d recomputes the fingerprint from those facts (docs/api.md, upstream references) and accepts the
path only if one signature verifies with a key of ``cache.upstream_keys``; the facts are then exactly what the
upstream cache serves for that path, so a Nix client using both caches finds the whole closure.
"""

from __future__ import annotations

__all__ = ["prove_upstream", "prove_upstream_async", "unproven_error"]

import asyncio
from collections.abc import Sequence

from niks3d.db.upstream import UpstreamRecord
from niks3d.errors import MissingPrerequisite
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.signing import PublicKey, fingerprint, parse_signature
from niks3d.uploads.request import UpstreamPath


def _prove(entry: UpstreamPath, keys: dict[str, PublicKey]) -> tuple[str | None, str]:
    """(the signature that proves ``entry``, or None; why not)."""
    try:
        message = fingerprint(entry.path.path, entry.nar_hash, entry.nar_size, [r.path for r in entry.references])
    except NixFormatError as exc:
        return None, str(exc)
    named: list[str] = []
    for sig in entry.signatures:
        name, _ = parse_signature(sig)
        key = keys.get(name)
        # One try per key: a store holds one signature per key name, and a request full of bad signatures
        # under an upstream name must not cost more than one verification per key.
        if key is None or name in named:
            continue
        named.append(name)
        if key.verify(sig, message):
            return sig, ""
    if not named:
        return None, "no signature by an upstream key (" + ", ".join(sorted(keys)) + ")"
    signers = ", ".join(sorted(set(named)))
    return None, f"the signature by {signers} does not match these NarHash, NarSize and references"


def unproven_error(problems: Sequence[tuple[str, str]]) -> MissingPrerequisite:
    shown = "; ".join(f"{path}: {why}" for path, why in problems[:5])
    more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    return MissingPrerequisite(
        f"{len(problems)} upstream reference(s) are not proven by an upstream signature: {shown}{more}",
        code="upstream_unproven",
        upstream=[{"path": path, "reason": why} for path, why in problems],
    )


async def prove_upstream_async(entries: Sequence[UpstreamPath], keys: Sequence[PublicKey]) -> dict[str, UpstreamRecord]:
    """:func:`prove_upstream` in a worker thread (thousands of verifications take a while), when there is any."""
    if not entries:
        return {}
    return await asyncio.to_thread(prove_upstream, entries, keys)


def prove_upstream(entries: Sequence[UpstreamPath], keys: Sequence[PublicKey]) -> dict[str, UpstreamRecord]:
    """Hash part -> the record of each entry; a 422 ``upstream_unproven`` unless every entry is proven.

    Costs at most one Ed25519 verification per entry and key (about 50 µs each)."""
    if entries and not keys:
        why = "this cache trusts no upstream keys (cache.upstream_keys)"
        raise unproven_error([(e.path.path, why) for e in entries])
    by_name = {k.name: k for k in keys}
    records: dict[str, UpstreamRecord] = {}
    problems: list[tuple[str, str]] = []
    for entry in entries:
        sig, why = _prove(entry, by_name)
        if sig is None:
            problems.append((entry.path.path, why))
            continue
        records[entry.path.hash] = UpstreamRecord(
            hash=entry.path.hash,
            name=entry.path.name,
            nar_hash=format_sha256(entry.nar_hash),
            nar_size=entry.nar_size,
            refs=tuple(r.basename for r in entry.references),
            signature=sig,
        )
    if problems:
        raise unproven_error(problems)
    return records
