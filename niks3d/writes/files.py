"""PUTs of the small files Nix writes next to NARs: ``nix-cache-info``, ``<hash>.ls`` and ``log/<drv>``.

- ``nix-cache-info`` is the server's (docs/api.md): a PUT whose ``StoreDir`` is this cache's is answered with
  success and changes nothing (Nix 2.8 PUTs it when a GET failed); any other store dir is refused.
- ``<hash>.ls`` (``write-nar-listing=1``) comes before its NAR and narinfo. It is parsed strictly (400
  ``invalid_listing``) and, for a path that is not published yet, recorded as asked for, never written to the
  bucket: when the path is published niks3d writes the listing of its NAR there (niks3d/uploads/listing.py,
  docs/security.md rule 8). Once the path is published a listing that says the same (in any Nix version's
  form) is a no-op, any other a 409.
- ``log/<drv>`` (``nix store copy-log``) comes after the outputs: it is accepted only with the proof that the
  derivation built a path the same identity published, its ``.drv`` in this cache
  (:mod:`niks3d.writes.logproof`; trusted writers are spared it), compressed with zstd as pushed logs are, and
  lives with those proven outputs. It is immutable, except that a proven log replaces one stored without its
  proof (docs/security.md, rule 3).
"""

from __future__ import annotations

__all__ = ["FileOutcome", "put_cache_info", "put_listing", "put_log"]

import hashlib
import logging
from dataclasses import dataclass

import zstandard
from asyncpg import Connection

from niks3d.db import logs as db_logs
from niks3d.db import uploads as db
from niks3d.db import writes as db_writes
from niks3d.db.retry import retry_transaction
from niks3d.errors import InvalidRequest, MissingPrerequisite, ObjectNotFound, StateConflict
from niks3d.logsetup import log_event
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import parse_listing, render_listing
from niks3d.uploads.context import PushContext
from niks3d.writes.logproof import proven_outputs

logger = logging.getLogger(__name__)
LOG_TYPE = "text/plain; charset=utf-8"
_LOG_LEVEL = 10


@dataclass(frozen=True, slots=True)
class FileOutcome:
    key: str
    created: bool


def put_cache_info(store_dir: str, body: bytes) -> None:
    """Accept a ``nix-cache-info`` PUT that agrees with this cache; refuse one for another store dir."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("nix-cache-info must be UTF-8 text", code="invalid_cache_info") from None
    fields = {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in text.splitlines()) if sep}
    theirs = fields.get("StoreDir")
    if theirs is not None and theirs != store_dir:
        raise StateConflict(f"this cache is for {store_dir}, not {theirs}", code="store_dir_mismatch")


async def _immutable(conn: Connection, key: str, digest: str, what: str) -> bool:
    """True if ``key`` is already present with these bytes (a no-op); 409 if present with others."""
    states = await db.object_states(conn, [key])
    state, _size, stored = states.get(key, ("pending", None, None))
    if state != "present":
        return False
    if stored == digest:
        return True
    raise StateConflict(
        f"{what} {key} is already published with other contents; it is immutable", code="file_published"
    )


async def _same_listing(ctx: PushContext, conn: Connection, key: str, canonical: bytes) -> bool:
    """Whether the published listing ``key`` says what ``canonical`` (a rendered listing) says. Compared with the
    object itself: listings published by niks3d, or imported, have no recorded hash."""
    if (await db.object_states(conn, [key])).get(key, ("pending",))[0] != "present":
        return False
    try:
        stored = await ctx.bucket.get(key)
        return render_listing(parse_listing(stored)) == canonical
    except (ObjectNotFound, NixFormatError):
        return False


async def put_listing(ctx: PushContext, hash_part: str, key: str, body: bytes) -> FileOutcome:
    """Take the (decoded) listing ``body`` PUT as ``key`` for the path ``hash_part``; see the module docstring."""
    try:
        canonical = render_listing(parse_listing(body))
    except NixFormatError as exc:
        raise InvalidRequest(f"{key}: {exc}; nothing was stored", code="invalid_listing") from None
    digest = format_sha256(hashlib.sha256(canonical).digest())

    async def attempt() -> FileOutcome:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await db.ensure_and_lock(conn, [(key, "ls")])
            if await db_writes.published_narinfo(conn, hash_part) is not None:
                if await _same_listing(ctx, conn, key, canonical):
                    return FileOutcome(key, False)
                raise StateConflict(
                    f"{key}: the path is already published with another listing, or none; it cannot be changed now",
                    code="path_published",
                )
            await db_writes.record_path_file(conn, [], key, "ls", size=len(canonical), digest=digest)
            return FileOutcome(key, True)

    return await retry_transaction(attempt)


async def put_log(
    ctx: PushContext, drv: str, key: str, text: bytes, *, identity: str, trusted: bool = False
) -> FileOutcome:
    """Store the build log ``text`` (uncompressed) of derivation ``drv`` (a basename).

    ``identity``: the writer (the identity's name); ``trusted``: it is marked ``trusted = true``, and with
    ``s3.verify = "size"`` its log needs no proof (it is then stored unproven, and a proven log replaces it).
    A proven log replaces one that is present unproven, in place (niks3d/db/logs.py); otherwise a log is
    immutable.
    """
    spared = trusted and ctx.settings.s3.verify == "size"
    body = zstandard.ZstdCompressor(level=_LOG_LEVEL).compress(text)
    digest = format_sha256(hashlib.sha256(body).digest())

    async def owners_of(conn: Connection) -> tuple[list[str], bool]:
        """The paths the log belongs to, and whether it is proven."""
        try:
            return await proven_outputs(conn, ctx.bucket, drv, identity), True
        except MissingPrerequisite:
            if not spared:
                raise
        return await db_writes.paths_built_by(conn, drv), False

    async def attempt() -> FileOutcome:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await db.ensure_objects(conn, [(key, "log")])
            row = (await db_logs.lock_logs(conn, [key]))[key]
            owners, proven = await owners_of(conn)
            if not owners:
                raise MissingPrerequisite(
                    f"{key}: no path built by /nix/store/{drv} is in this cache; copy its outputs first",
                    code="no_published_output",
                )
            created = True
            if row.state == "present":
                replaces = proven and not row.proven  # rule 3: a genuine log replaces one never proven
                if row.file_hash == digest:
                    created = False
                elif not replaces:
                    raise StateConflict(
                        f"the build log {key} is already published with other contents; it is immutable",
                        code="file_published",
                    )
            if created:
                # Over an unproven log this is an in-place replacement: S3 swaps the object atomically, and the
                # row's lock keeps other writers and GC out until the new state is committed.
                await ctx.bucket.put(key, body, content_type=LOG_TYPE, content_encoding="zstd")
            await db_writes.record_path_file(conn, owners, key, "log", size=len(body), digest=digest)
            if proven:
                await db_logs.mark_proven(conn, [(key, len(body), digest)])
            return FileOutcome(key, created)

    outcome = await retry_transaction(attempt)
    log_event(logger, logging.INFO, "write.log", "build log %s stored by PUT (%d bytes)", key, len(text))
    return outcome
