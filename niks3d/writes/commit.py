"""A narinfo PUT by stock Nix: the commit point of one store path (docs/api.md, stock Nix as a writer).

The narinfo is parsed as strictly as a pushed one, and published only when everything it says was checked by
niks3d itself: the NAR its ``URL`` names arrived by PUT (or belongs to a published path) and hashed to its
NarHash/NarSize and FileHash/FileSize, and every reference is published (Nix uploads references first). niks3d
then renders the narinfo itself, signs it with the server's keys (the client's ``Sig:`` lines are dropped unless
``signing.keep_client_signatures``), writes it to the bucket while its rows are locked, and records the path,
references, files and a root for the retention window in one transaction, as ``complete`` does. A path for which
a listing was PUT gets niks3d's own, derived from its NAR (niks3d/uploads/listing.py).

A path that is already published is never changed: a narinfo with the same fingerprint (StorePath, NarHash,
NarSize, References) is a no-op (``nix store sign`` and a second ``nix copy`` with another compression send such
narinfos), anything else is refused with 409.
"""

from __future__ import annotations

__all__ = ["CommitOutcome", "commit_narinfo"]

import logging
from dataclasses import dataclass

from asyncpg import Connection

from niks3d.db import paths as db_paths
from niks3d.db import uploads as db
from niks3d.db import writes as db_writes
from niks3d.db.notify import notify_store_paths
from niks3d.db.retry import retry_transaction
from niks3d.errors import MissingPrerequisite, StateConflict
from niks3d.logsetup import log_event
from niks3d.nix.bucketkeys import log_key, ls_key, narinfo_key, parse_bucket_key
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256, parse_sha256
from niks3d.nix.narinfo import NarInfo, parse_narinfo
from niks3d.uploads.context import PushContext
from niks3d.uploads.listing import derive_listings, put_listings

logger = logging.getLogger(__name__)
NARINFO_TYPE = "text/x-nix-narinfo"


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    path: str
    created: bool  # False: the path was published before with the same fingerprint; nothing changed


def _same_fingerprint(a: NarInfo, b: NarInfo) -> bool:
    return a.fingerprint() == b.fingerprint()


def _check_nar(info: NarInfo, facts: db_writes.NarFacts | None) -> None:
    """Refuse (422) unless the NAR the narinfo names was checked and matches every field."""
    if facts is None:
        raise MissingPrerequisite(
            f"the NAR {info.url} named by {info.store_path.path} was not uploaded to this cache; PUT it first",
            code="nar_missing",
        )
    problems = []
    if facts.compression != info.compression:
        problems.append(f"Compression is {info.compression}, the NAR is {facts.compression}")
    if format_sha256(info.nar_hash) != facts.nar_hash:
        problems.append(f"NarHash is {format_sha256(info.nar_hash)}, the NAR hashes to {facts.nar_hash}")
    if info.nar_size != facts.nar_size:
        problems.append(f"NarSize is {info.nar_size}, the NAR has {facts.nar_size} bytes")
    if info.file_hash is not None and format_sha256(info.file_hash) != facts.file_hash:
        problems.append(f"FileHash is {format_sha256(info.file_hash)}, the file hashes to {facts.file_hash}")
    if info.file_size is not None and info.file_size != facts.file_size:
        problems.append(f"FileSize is {info.file_size}, the file has {facts.file_size} bytes")
    if problems:
        what = f"{info.store_path.path}: the narinfo does not describe {info.url}: "
        raise MissingPrerequisite(what + "; ".join(problems), code="nar_mismatch")


def parse_put_narinfo(hash_part: str, body: bytes) -> NarInfo:
    """The narinfo Nix PUT as ``<hash_part>.narinfo``, strictly parsed, with a URL that names a NAR key."""
    info = parse_narinfo(body, expected_hash=hash_part)
    try:
        key = parse_bucket_key(info.url)
    except NixFormatError as exc:
        raise MissingPrerequisite(
            f"narinfo URL {info.url!r} is not a NAR in this cache: {exc}", code="invalid_narinfo"
        ) from None
    if key.kind != "nar":
        raise MissingPrerequisite(f"narinfo URL {info.url!r} is not a NAR in this cache", code="invalid_narinfo")
    return info


async def commit_narinfo(
    ctx: PushContext, hash_part: str, body: bytes, *, token_name: str, root: str | None
) -> CommitOutcome:
    """Publish the narinfo ``body`` PUT as ``<hash_part>.narinfo``; see the module docstring."""
    info = parse_put_narinfo(hash_part, body)
    key = narinfo_key(hash_part)
    own = info.store_path.basename
    references = [r for r in info.references if r != own]
    listing_key = ls_key(hash_part)
    nars = {hash_part: (info.url, info.compression)}
    # A listing was PUT for the path: niks3d publishes the NAR's own instead, read before the locks are taken.
    async with ctx.pool.acquire() as conn:
        wanted = (await db.object_states(conn, [listing_key])).get(listing_key, ("pending",))[0] == "present"
    listings = await derive_listings(ctx, nars) if wanted else {}

    async def attempt() -> CommitOutcome:
        async with ctx.pool.acquire() as conn, conn.transaction():
            # The narinfo's row serializes commits of this path, here and by the push API; the listing's row (if
            # one was PUT) makes a listing PUT wait, and then find the path published (docs/security.md, rule 8).
            await db.ensure_and_lock(conn, [(key, "narinfo")], also=[listing_key])
            published = await db_writes.published_narinfo(conn, hash_part)
            if published is not None:
                if not _same_fingerprint(parse_narinfo(published), info):
                    raise StateConflict(
                        f"{info.store_path.path} is already published with another NarHash, NarSize or References;"
                        " a published path is never replaced",
                        code="path_published",
                    )
                await _roots(conn, hash_part, root, token_name)
                return CommitOutcome(info.store_path.path, False)
            _, facts = await db_writes.lock_nar_with_facts(conn, info.url)
            _check_nar(info, facts)
            assert facts is not None
            ref_hashes = [r[:32] for r in references]
            found = await db_paths.published_hashes(conn, ref_hashes)
            missing = [r for r in references if r[:32] not in found]
            if missing:
                raise MissingPrerequisite(
                    f"cannot add {info.store_path.path}: its reference /nix/store/{missing[0]} is not in this cache"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    code="reference_missing",
                    missing=[f"/nix/store/{m}" for m in missing],
                )
            files = await _files(conn, hash_part, info)
            if (listing_key, "ls") in files:
                listing = listings.get(hash_part) or (await derive_listings(ctx, nars)).get(hash_part)
                if listing is None:  # not a NAR niks3d can list: what was PUT is not left under the key
                    files.remove((listing_key, "ls"))
                    await ctx.bucket.delete_many([listing_key])
                else:
                    await db.mark_present(conn, await put_listings(ctx.bucket, [(listing_key, listing)]))
            sigs = info.sigs if ctx.settings.signing.keep_client_signatures else ()
            rendered = NarInfo(
                store_path=info.store_path,
                url=info.url,
                compression=facts.compression,
                file_hash=parse_sha256(facts.file_hash),
                file_size=facts.file_size,
                nar_hash=info.nar_hash,
                nar_size=info.nar_size,
                references=info.references,
                deriver=info.deriver,
                system=None,
                sigs=sigs,
                ca=info.ca,
            ).signed(ctx.signing_keys)
            text = rendered.render()
            # The rows first: their foreign keys lock the NAR, the files and the references against a GC sweep
            # (or fail, and the attempt runs again) before the narinfo reaches the bucket.
            await db_paths.insert_published(
                conn,
                [
                    db_paths.PublishedPath(
                        hash=hash_part,
                        name=info.store_path.name,
                        nar_hash=facts.nar_hash,
                        nar_size=facts.nar_size,
                        nar_key=info.url,
                        narinfo_key=key,
                        compression=facts.compression,
                        file_hash=facts.file_hash,
                        file_size=facts.file_size,
                        deriver=info.deriver,
                        ca=info.ca,
                        narinfo=text,
                        references=tuple(r[:32] for r in info.references),
                        files=tuple(files),
                        published_by=token_name,
                    )
                ],
            )
            await db.mark_present(conn, [(key, len(text.encode()), None)])
            await _roots(conn, hash_part, root, token_name)
            await notify_store_paths(conn, published=[hash_part])
            await ctx.bucket.put(key, text.encode(), content_type=NARINFO_TYPE)
            return CommitOutcome(info.store_path.path, True)

    outcome = await retry_transaction(attempt)
    if outcome.created:
        log_event(
            logger,
            logging.INFO,
            "write.narinfo",
            "published %s from a narinfo PUT by %s",
            outcome.path,
            token_name,
            path=outcome.path,
            token=token_name,
        )
    return outcome


async def _roots(conn: Connection, hash_part: str, root: str | None, token_name: str) -> None:
    """A root for the retention window, and membership of the named root the URL gave (if any)."""
    await db_paths.touch_roots(conn, [hash_part], None)
    if root is not None:
        await db_writes.add_root_member(conn, root, hash_part, token_name)


async def _files(conn: Connection, hash_part: str, info: NarInfo) -> list[tuple[str, str]]:
    """The per-path files already uploaded for this path: its ``.ls`` and its deriver's build log."""
    keys = [(ls_key(hash_part), "ls")]
    if info.deriver is not None:
        keys.append((log_key(info.deriver), "log"))
    states = await db.object_states(conn, [k for k, _ in keys])
    return [(k, kind) for k, kind in keys if states.get(k, ("pending",))[0] == "present"]
