"""``niks3d fsck --listings``: every published listing derived again from its path's NAR (docs/security.md,
rule 8).

Since rule 8 niks3d writes each ``<hash>.ls`` itself from the NAR, at publication; a listing published before it,
or registered by ``niks3d import`` from a bucket someone else wrote, was a writer's word. This check reads every
listed path's NAR (so it is an option: it costs what reading the whole cache costs), renders its listing as
niks3d would and compares it with the one in the bucket by what they say (any Nix rendering of the same tree is
the same listing). A listing that does not parse is ``listing_invalid``; one that describes another tree is
``listing_differs``, whose detail names each kind of lie found (entries the NAR does not have, entries missing,
another type, size, executable bit, narOffset or symlink target) with the first path of each. ``--repair``
writes the derived listing over it.
"""

from __future__ import annotations

__all__ = ["ListedPath", "check_listings", "differences", "write_listings"]

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from niks3d.importer.problems import Report
from niks3d.nix.errors import NixFormatError
from niks3d.nix.listing import ListingNode, parse_listing
from niks3d.storage.s3 import Bucket
from niks3d.uploads.listing import LS_TYPE, nar_listing

_CONCURRENCY = 4  # NARs read at once, as many as a daemon verifies (s3.verify_concurrency's default)
_FIELDS = ("size", "executable", "narOffset", "target")


@dataclass(frozen=True, slots=True)
class ListedPath:
    ls_key: str
    nar_key: str
    compression: str


def _walk(node: ListingNode, where: str = "") -> Iterator[tuple[str, ListingNode]]:
    yield where or "/", node
    for name, child in sorted(node.get("entries", {}).items()):
        yield from _walk(child, f"{where}/{name}")


def differences(stored: ListingNode, derived: ListingNode) -> dict[str, str]:
    """Kind of lie -> the first path (inside the store path) where ``stored`` says it, against ``derived``."""
    said, true = dict(_walk(stored)), dict(_walk(derived))
    found: dict[str, str] = {}
    for where in sorted(said.keys() | true.keys()):
        if where not in true:
            found.setdefault("entry the NAR does not have", where)
        elif where not in said:
            found.setdefault("entry missing", where)
        elif said[where].get("type") != true[where].get("type"):
            found.setdefault("type", where)
        else:
            for field in _FIELDS:
                if said[where].get(field) != true[where].get(field):
                    found.setdefault(field, where)
    return found


async def check_listings(bucket: Bucket, paths: list[ListedPath], report: Report) -> list[tuple[str, bytes]]:
    """Compare the listings of ``paths`` with their NARs; reports what lies; returns (key, derived listing) for
    each listing to write again. A NAR that is gone or is not one is left to the other checks."""
    stored = await bucket.get_many([p.ls_key for p in paths])
    slots = asyncio.Semaphore(_CONCURRENCY)

    async def derive(p: ListedPath) -> bytes | None:
        async with slots:
            return await nar_listing(bucket, p.nar_key, p.compression)

    derived = await asyncio.gather(*(derive(p) for p in paths))
    rewrite: list[tuple[str, bytes]] = []
    for p, listing in zip(paths, derived, strict=True):
        body = stored.get(p.ls_key)
        report.counts["listings_checked"] += 1
        if listing is None or body is None:
            continue
        truth = parse_listing(listing)
        try:
            said = parse_listing(body)
        except NixFormatError as exc:
            report.add("listing_invalid", p.ls_key, f"does not parse: {exc}")
            rewrite.append((p.ls_key, listing))
            continue
        if lies := differences(said, truth):
            shown = "; ".join(f"{kind} ({where})" for kind, where in lies.items())
            report.add("listing_differs", p.ls_key, f"says other than {p.nar_key}: {shown}")
            rewrite.append((p.ls_key, listing))
    return rewrite


async def write_listings(bucket: Bucket, listings: list[tuple[str, bytes]]) -> None:
    for key, body in listings:
        await bucket.put(key, body, content_type=LS_TYPE)
