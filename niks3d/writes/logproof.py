"""The proof a build log PUT by stock Nix needs: its ``.drv``, in this cache (docs/security.md, rule 3).

``nix store copy-log`` sends only the log, and a narinfo's ``Deriver`` line is whatever its writer said, so a path
naming a derivation proves nothing about it. What does: the ``.drv`` itself, published in this cache as a store
path (``nix copy --to <cache> /nix/store/<h>-<n>.drv``; its NAR was checked when it was PUT), whose contents hash
to that store path (a text path: ``niks3d.nix.derivation.text_store_path``) and name among its outputs a path that
the same identity published. The ``.drv`` alone would not do: anyone can copy a derivation, and the first log in
is immutable, so without the publisher check a stranger could give the victim's output its log first. This is
the stock-Nix form of the push API's rule that a log comes with the push that publishes the output. A floating
content-addressed derivation names no output: its outputs are the paths its build-trace entries in this cache
name (written by a push that proved them its own: niks3d/uploads/drvproof.py). The log is
then the log of exactly those outputs. Writers marked ``trusted = true`` are spared the proof while
``s3.verify = "size"``, as their NARs are spared the full check.
"""

from __future__ import annotations

__all__ = ["proven_outputs"]

from asyncpg import Connection

from niks3d.db import paths as db_paths
from niks3d.errors import MissingPrerequisite, ObjectNotFound
from niks3d.nix.bucketkeys import build_trace_key
from niks3d.nix.decompress import StreamDecompressor
from niks3d.nix.derivation import MAX_DERIVATION_BYTES, parse_derivation, text_store_path
from niks3d.nix.errors import InvalidNar, NixFormatError
from niks3d.nix.nar import single_file_contents
from niks3d.nix.narinfo import parse_narinfo
from niks3d.nix.storepath import StorePath
from niks3d.storage.s3 import Bucket

# How to publish the proof, for the refusals (Nix prints them).
_HOW = "copy the .drv to this cache first (nix copy --to <cache> {drv}), or push with `niks3 push`, which sends it"


def _refuse(drv: StorePath, why: str) -> MissingPrerequisite:
    return MissingPrerequisite(
        f"the build log of {drv.path} is not accepted: {why}; " + _HOW.format(drv=drv.path), code="log_unproven"
    )


async def _contents(conn: Connection, bucket: Bucket, drv: StorePath) -> bytes:
    narinfo = await db_paths.narinfo_by_hash(conn, drv.hash)
    if narinfo is None:
        raise _refuse(drv, "its .drv is not in this cache")
    info = parse_narinfo(narinfo)
    if info.store_path != drv:
        raise _refuse(drv, f"its hash part is taken by {info.store_path.path}")
    if info.nar_size > MAX_DERIVATION_BYTES + 4096:
        raise _refuse(drv, f"{drv.path} in this cache is {info.nar_size} bytes of NAR, too large for a .drv")
    try:
        body = await bucket.get(info.url)
    except ObjectNotFound:
        raise _refuse(drv, f"the NAR of {drv.path} is gone from the bucket") from None
    out = bytearray()

    def sink(data: bytes) -> None:
        out.extend(data)
        if len(out) > info.nar_size:
            raise InvalidNar("longer than its NarSize", offset=len(out))

    try:
        decoder = StreamDecompressor(info.compression, sink)
        decoder.feed(body)
        decoder.finish()
    except InvalidNar:
        raise _refuse(drv, f"the NAR of {drv.path} in this cache does not decompress") from None
    contents = single_file_contents(bytes(out))
    if contents is None:
        raise _refuse(drv, f"{drv.path} in this cache is not one regular file")
    return contents


async def proven_outputs(conn: Connection, bucket: Bucket, drv_basename: str, identity: str) -> list[str]:
    """Hash parts of the outputs of the derivation ``drv_basename`` that ``identity`` published, proven by the
    ``.drv`` in this cache; raises MissingPrerequisite (422 ``log_unproven``) naming what is missing."""
    try:
        drv = StorePath.from_basename(drv_basename)
    except NixFormatError as exc:
        raise MissingPrerequisite(f"log/{drv_basename[:120]}: {exc}", code="log_unproven") from None
    if not drv.is_derivation:
        raise MissingPrerequisite(f"log/{drv_basename}: {drv.path} is not a derivation", code="log_unproven")
    contents = await _contents(conn, bucket, drv)
    try:
        parsed = parse_derivation(contents)
        actual = text_store_path(drv.name, contents, parsed.references())
    except NixFormatError as exc:
        raise _refuse(drv, f"{drv.path} in this cache is not a derivation: {exc}") from None
    if actual != drv:
        raise _refuse(drv, f"{drv.path} in this cache is not that derivation: its contents hash to {actual.path}")
    outputs = {StorePath.parse(o) for o in parsed.outputs.values() if o}
    if parsed.floating_outputs:
        # content-addressed: its outputs are those its realisations in this cache name (security.md, rule 3)
        keys = [build_trace_key(drv.basename, o) for o in parsed.floating_outputs]
        outputs |= {StorePath.parse(p) for p in (await db_paths.realisation_holders(conn, keys)).values()}
    names = await db_paths.published_names(conn, [o.hash for o in outputs])
    published = [o.hash for o in outputs if names.get(o.hash) == o.name]
    if not published:
        if parsed.floating_outputs:
            raise _refuse(
                drv,
                "it is content-addressed and no realisation of it in this cache names an output (push the output "
                "with `niks3 push`, which sends its realisation)",
            )
        raise _refuse(drv, "none of its outputs is in this cache; copy them first")
    publishers = await db_paths.published_by(conn, published)
    mine = sorted(h for h in published if publishers.get(h) == identity)
    if not mine:
        raise MissingPrerequisite(
            f"the build log of {drv.path} is not accepted from {identity!r}: its outputs in this cache were published"
            " by another identity, and a log comes only from the writer that published the output",
            code="log_unproven",
        )
    return mine
