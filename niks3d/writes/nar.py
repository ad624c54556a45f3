"""A NAR PUT by stock Nix: streamed into the bucket under the key Nix chose, checked on the way (docs/api.md).

Nix names a NAR ``nar/<nix32 sha256 of the file>.nar<ext>``, so the key says what the bytes must be. While the
body streams in, niks3d hashes it (FileHash, FileSize) and decompresses it on the fly into the NAR validator
(NarHash, NarSize, and every parser rule of docs/protocol.md 1.3). Nothing becomes visible under the key before the
check passed: a body up to :data:`PART_SIZE` is held in memory and written in one PUT afterwards; a larger one
goes to S3 as a multipart upload whose parts stay invisible until CompleteMultipartUpload, which is sent only
after the whole body checked out, and the upload is aborted otherwise. So a wrong body never replaces the
object another writer relies on, and the only object an accepted body can write is exactly the one its key
names. Memory stays at about two parts per PUT in flight, whatever the NAR's size.

The object's row exists (pending) before anything is written (docs/design.md invariant 4); a checked NAR becomes
present with its facts in ``nar_facts``. An upload that never gets its narinfo is an object no path names, which
GC deletes after the grace period; an interrupted one leaves only its pending row and an aborted multipart upload.
"""

from __future__ import annotations

__all__ = ["PART_SIZE", "NarOutcome", "ingest_nar"]

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from niks3d.db import uploads as db
from niks3d.db import writes as db_writes
from niks3d.db.retry import retry_transaction
from niks3d.errors import InvalidRequest, Unsupported
from niks3d.logsetup import log_event
from niks3d.nix import nix32
from niks3d.nix.decompress import SNIFF_BYTES, StreamDecompressor, sniff_compression
from niks3d.nix.errors import InvalidNar
from niks3d.nix.hashes import format_sha256
from niks3d.nix.nar_read import NarValidator
from niks3d.storage.models import PartInfo
from niks3d.uploads.context import PushContext

logger = logging.getLogger(__name__)

# Bodies up to this size are checked in memory and written in one PUT; larger ones are uploaded in parts of at
# least this size (S3's minimum part is 5 MiB; 10000 parts of 8 MiB hold 78 GiB, and a Content-Length that
# needs more gets larger parts).
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 9_000
# Input is checked in blocks of about this size, in a worker thread (hashing and decompression release the GIL),
# while the next block arrives and the parts go to S3.
BLOCK = 1 << 20
NAR_TYPE = "application/x-nix-nar"
# File extension -> the compressions a NAR with that name may have (docs/protocol.md 4.6).
_BY_EXTENSION = {"": ("none", "gzip"), ".xz": ("xz",), ".zst": ("zstd",), ".bz2": ("bzip2",)}


@dataclass(frozen=True, slots=True)
class NarOutcome:
    key: str
    created: bool  # False: the object was already there and checked; nothing was written
    facts: db_writes.NarFacts


def _expected(key: str) -> tuple[bytes, tuple[str, ...]]:
    """The file hash a NAR key names, and the compressions its extension allows."""
    name = key.removeprefix("nar/")
    digest_text, _, extension = name.partition(".nar")
    allowed = _BY_EXTENSION.get(extension)
    if allowed is None:
        raise Unsupported(
            f"{key}: NARs compressed as {extension!r} are not accepted; use compression=zstd, xz, bzip2 or none",
            code="unsupported_compression",
        )
    return nix32.decode(digest_text, 32), allowed


class _Checker:
    """FileHash/FileSize of the raw body and, through the decompressor, the NAR's hash, size and validity."""

    def __init__(self, key: str, allowed: tuple[str, ...]) -> None:
        self._key = key
        self._allowed = allowed
        self.file_digest = hashlib.sha256()
        self.file_size = 0
        self.validator = NarValidator()
        self.decompressor: StreamDecompressor | None = None
        self._head = b""

    def feed_all(self, chunks: list[bytes]) -> None:
        """The next chunks of the body, as received (one call per block: one thread hop per block)."""
        for chunk in chunks:
            self.feed(chunk)

    def feed(self, block: bytes) -> None:
        self.file_digest.update(block)
        self.file_size += len(block)
        if self.decompressor is None:
            self._head += block
            if len(self._head) < SNIFF_BYTES:
                return
            self._start(self._head)
            block, self._head = self._head, b""
        assert self.decompressor is not None
        self.decompressor.feed(block)

    def _start(self, head: bytes) -> None:
        found = sniff_compression(head)
        if found not in self._allowed:
            what = "neither a NAR nor a supported compression" if found is None else f"{found}-compressed"
            raise InvalidNar(f"the body is {what}, but {self._key} must be {' or '.join(self._allowed)}")
        self.decompressor = StreamDecompressor(found, self.validator.feed)

    def finish(self) -> tuple[str, int, str]:
        """(compression, NarSize, NarHash) once the body ended; InvalidNar if it is not a complete NAR."""
        if self.decompressor is None:
            if not self._head:
                raise InvalidNar("the body is empty")
            self._start(self._head)
            assert self.decompressor is not None
            self.decompressor.feed(self._head)
        self.decompressor.finish()
        result = self.validator.finish()
        return self.decompressor.compression, result.nar_size, format_sha256(result.nar_hash)


class _Pipeline:
    """The checker fed block by block in a worker thread, one block in flight while the next one arrives."""

    def __init__(self, checker: _Checker) -> None:
        self._checker = checker
        self._chunks: list[bytes] = []
        self._size = 0
        self._in_flight: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= BLOCK:
            await self._submit()

    async def _submit(self) -> None:
        await self.wait()
        chunks, self._chunks, self._size = self._chunks, [], 0
        self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._checker.feed_all, chunks))

    async def wait(self) -> None:
        """Wait for the block in flight (its InvalidNar is raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def finish(self) -> tuple[str, int, str]:
        if self._chunks:
            await self._submit()
        await self.wait()
        return await asyncio.to_thread(self._checker.finish)

    async def close(self) -> None:
        """After a failure: let the worker thread finish with the checker (its outcome no longer matters)."""
        with contextlib.suppress(BaseException):
            await self.wait()


class _Upload:
    """The body's way into S3: held in memory up to one part, then a multipart upload with one part in flight.

    Chunks are copied once, into the buffer of the current part; a full part's buffer is handed to S3 as it is
    (no copy) and filled again once its upload returned. With a Content-Length the buffers have their final size
    from the start (no growing, no splitting); without one, a buffer grows to the part size.
    """

    def __init__(self, ctx: PushContext, key: str, part_size: int, length: int | None) -> None:
        self._ctx = ctx
        self._key = key
        self._part_size = part_size
        self._left = length  # bytes still expected, when the length is known
        self._upload_id: str | None = None
        self._parts: list[PartInfo] = []
        self._in_flight: asyncio.Task[PartInfo] | None = None
        self._in_flight_buffer: bytearray | None = None
        self._spare: bytearray | None = None  # the buffer of the last part, once its upload returned
        self._buffer, self._fill = self._new_buffer(), 0

    def _new_buffer(self) -> bytearray:
        if self._left is None:
            return bytearray()
        size = max(0, min(self._part_size, self._left))
        self._left -= size
        spare, self._spare = self._spare, None
        if spare is not None and len(spare) == size:
            return spare
        return bytearray(size)

    async def add(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            growing = self._left is None
            room = (self._part_size if growing else len(self._buffer)) - self._fill
            if room <= 0:
                if not growing and not self._left:
                    # More than the Content-Length announced (aiohttp stops there): go on as without a length.
                    self._left = None
                    continue
                await self._send()
                continue
            piece = view[:room]
            if growing:
                self._buffer += piece
            else:
                self._buffer[self._fill : self._fill + len(piece)] = piece
            self._fill += len(piece)
            view = view[len(piece) :]

    async def _send(self) -> None:
        """Upload the current (full) buffer as the next part; start filling another."""
        bucket = self._ctx.bucket
        if self._upload_id is None:
            self._upload_id = await bucket.create_multipart(self._key, content_type=NAR_TYPE)
        await self._land()
        part, fill = self._buffer, self._fill
        self._in_flight_buffer = part
        self._in_flight = asyncio.create_task(
            bucket.upload_part(self._key, self._upload_id, len(self._parts) + 1, memoryview(part)[:fill])
        )
        self._buffer, self._fill = self._new_buffer(), 0

    async def _land(self) -> None:
        """Wait for the part in flight; its buffer can then be filled again."""
        if self._in_flight is not None:
            self._parts.append(await self._in_flight)
            self._in_flight = None
            self._spare, self._in_flight_buffer = self._in_flight_buffer, None

    async def commit(self, sha256: bytes) -> None:
        """Make the object visible: one PUT (whose SHA-256 S3 checks), or the last part and CompleteMultipartUpload."""
        bucket = self._ctx.bucket
        body = memoryview(self._buffer)[: self._fill]
        if self._upload_id is None:
            await bucket.put(self._key, body, content_type=NAR_TYPE, sha256=sha256)
            return
        if self._fill:
            await self._send()
        await self._land()
        await bucket.complete_multipart(self._key, self._upload_id, self._parts)

    async def abort(self) -> None:
        if self._in_flight is not None:
            self._in_flight.cancel()
            with contextlib.suppress(BaseException):  # the part is thrown away with the upload
                await self._in_flight
            self._in_flight = None
        if self._upload_id is not None:
            try:
                await self._ctx.bucket.abort_multipart(self._key, self._upload_id)
            except Exception:  # GC's orphan sweep aborts what is left
                logger.warning("could not abort the multipart upload %s of %s", self._upload_id, self._key)


async def _drain(body: AsyncIterator[bytes]) -> None:
    async for _ in body:
        pass


async def _ensure_row(ctx: PushContext, key: str) -> None:
    async with ctx.pool.acquire() as conn:
        await db.ensure_objects(conn, [(key, "nar")])


async def ingest_nar(
    ctx: PushContext, key: str, body: AsyncIterator[bytes], *, length: int | None, token_name: str
) -> NarOutcome:
    """Receive the NAR ``key`` (a validated ``nar/`` key) from ``body``; see the module docstring.

    Raises :class:`~niks3d.errors.InvalidRequest` when the body is not what the key names (the bucket is left as
    it was).
    """
    expected, allowed = _expected(key)
    async with ctx.pool.acquire() as conn:  # one connection for the look-up and the row (a pool acquire each cost)
        known = await db_writes.facts_of_nar(conn, key)
        here = known is not None and known.file_hash == format_sha256(expected)
        if not here:
            await db.ensure_objects(conn, [(key, "nar")])
    if here:
        # Already here and checked (Nix HEADs before it PUTs, so this is a retry or a race): keep what is there.
        assert known is not None
        await _drain(body)
        return NarOutcome(key, False, known)
    part_size = max(PART_SIZE, -(-(length or 0) // MAX_PARTS))
    checker = _Checker(key, allowed)
    pipeline = _Pipeline(checker)
    upload = _Upload(ctx, key, part_size, length)
    committed = False
    try:
        async for chunk in body:
            await pipeline.add(chunk)
            await upload.add(chunk)
        compression, nar_size, nar_hash = await pipeline.finish()
        if checker.file_digest.digest() != expected:
            raise InvalidRequest(
                f"{key}: the body's SHA-256 is {format_sha256(checker.file_digest.digest())}, "
                f"not the hash its name gives; nothing was stored",
                code="nar_mismatch",
            )
        # The row again, in case a forced GC removed it meanwhile: the object must never be untracked.
        await _ensure_row(ctx, key)
        await upload.commit(expected)
        committed = True
    except InvalidNar as exc:
        raise InvalidRequest(f"{key}: {exc}; nothing was stored", code="invalid_nar") from None
    finally:
        if not committed:
            await pipeline.close()
            await upload.abort()
    facts = db_writes.NarFacts(key, compression, nar_hash, nar_size, format_sha256(expected), checker.file_size)

    async def record() -> None:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await db.ensure_and_lock(conn, [(key, "nar")])
            await db_writes.record_nar(conn, facts, token_name)

    await retry_transaction(record)
    log_event(
        logger,
        logging.INFO,
        "write.nar",
        "received %s by PUT: %s, %d bytes, NAR %d bytes",
        key,
        compression,
        checker.file_size,
        nar_size,
        key=key,
        file_size=checker.file_size,
        nar_size=nar_size,
    )
    return NarOutcome(key, True, facts)
