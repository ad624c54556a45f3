"""Reading a narinfo from the bucket and deciding whether it can be registered as it is.

A narinfo is registered only if it parses strictly (``niks3d.nix.narinfo``, the rules Nix applies), names the
path of its key, has a FileHash and a FileSize (the database keeps both), points at a ``nar/`` key, and that NAR
is in the bucket with exactly FileSize bytes. Its references are checked later, over all of them at once
(``niks3d.db.importing.mark_unclosed``).
"""

from __future__ import annotations

__all__ = ["check_narinfo", "resigned"]

from collections.abc import Sequence

from niks3d.db.importing import StagedPath
from niks3d.importer.inventory import Inventory
from niks3d.importer.problems import Problem
from niks3d.nix.bucketkeys import parse_bucket_key
from niks3d.nix.errors import NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.narinfo import NarInfo, parse_narinfo
from niks3d.nix.signing import SecretKey


def resigned(info: NarInfo, keys: Sequence[SecretKey]) -> str:
    """The narinfo re-rendered with the server's signatures added (existing signatures are kept)."""
    return info.signed(keys).render()


def _as_stored(info: NarInfo, text: str) -> str:
    """The bytes to keep: the bucket's own, unless they spell a field differently from how the database checks
    them (an empty Compression, a base16 hash): then the narinfo re-rendered, which is what Nix reads anyway."""
    assert info.file_hash is not None
    lines = "\n" + text
    wanted = (
        f"\nStorePath: {info.store_path.path}\n",
        f"\nURL: {info.url}\n",
        f"\nCompression: {info.compression}\n",
        f"\nFileHash: {format_sha256(info.file_hash)}\n",
        f"\nFileSize: {info.file_size}\n",
        f"\nNarHash: {format_sha256(info.nar_hash)}\n",
        f"\nNarSize: {info.nar_size}\n",
    )
    return text if all(w in lines for w in wanted) else info.render()


def check_narinfo(
    key: str, body: bytes, inventory: Inventory, keys: Sequence[SecretKey] = ()
) -> tuple[StagedPath | None, Problem | None]:
    """Parse one narinfo; returns what to stage or the problem that keeps it out."""
    hash_part = key[: -len(".narinfo")]
    try:
        info = parse_narinfo(body)
    except NixFormatError as exc:
        return None, Problem("unparsable", key, str(exc))
    if info.store_path.hash != hash_part:
        return None, Problem("wrong_key", key, f"its StorePath is {info.store_path.path}")
    if info.file_hash is None or info.file_size is None:
        return None, Problem("unparsable", key, "no FileHash or FileSize: niks3d registers only complete narinfos")
    try:
        nar = parse_bucket_key(info.url)
    except NixFormatError as exc:
        return None, Problem("unparsable", key, f"URL {info.url!r} is not a NAR key of this cache: {exc}")
    if nar.kind != "nar":
        return None, Problem("unparsable", key, f"URL {info.url!r} is not a NAR key (nar/...)")
    size = inventory.size(info.url)
    if size is None:
        return None, Problem("nar_missing", key, f"{info.url} is not in the bucket")
    if size != info.file_size:
        return None, Problem("nar_size", key, f"{info.url} has {size} bytes, FileSize says {info.file_size}")
    text = resigned(info, keys) if keys else _as_stored(info, body.decode("utf-8"))
    return (
        StagedPath(
            hash=hash_part,
            name=info.store_path.name,
            nar_hash=format_sha256(info.nar_hash),
            nar_size=info.nar_size,
            nar_key=info.url,
            compression=info.compression,
            file_hash=format_sha256(info.file_hash),
            file_size=info.file_size,
            deriver=info.deriver,
            ca=info.ca,
            narinfo=text,
            refs=tuple(sorted({r[:32] for r in info.references})),
        ),
        None,
    )
