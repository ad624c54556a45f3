"""Which bucket objects a pushed path needs, and the upload specs (presigned requests) handed to clients."""

from __future__ import annotations

__all__ = [
    "CONTENT_TYPES",
    "WantedObject",
    "build_trace_outputs",
    "initial_part_count",
    "object_spec",
    "wanted_objects",
]

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from niks3d.nix.bucketkeys import CONTENT_TYPES as BUCKET_CONTENT_TYPES
from niks3d.nix.bucketkeys import build_trace_key, log_key, ls_key, nar_key, narinfo_key, realisation_key, staging_key
from niks3d.nix.realisation import parse_realisation_id

if TYPE_CHECKING:
    from niks3d.config import S3Settings
    from niks3d.storage.models import PresignedRequest
    from niks3d.storage.s3 import Bucket
    from niks3d.uploads.request import PathRequest

# kind -> (Content-Type, Content-Encoding) of what is stored under that kind of key; build logs are stored zstd.
CONTENT_TYPES: dict[str, tuple[str, str | None]] = {
    kind: (content_type, "zstd" if kind == "log" else None)
    for kind, content_type in BUCKET_CONTENT_TYPES.items()
    if kind != "nix-cache-info"
}
_INITIAL_PARTS = 16


@dataclass(frozen=True, slots=True)
class WantedObject:
    key: str
    kind: str
    nar_size: int  # for NARs, the uncompressed size (decides multipart); 0 otherwise

    @property
    def client_uploads(self) -> bool:
        """NARs and logs come from the client; narinfos, realisations and listings are written by the server (a
        listing is derived from the path's NAR: docs/security.md, rule 8, so the push API asks for none)."""
        return self.kind in ("nar", "log")


def build_trace_outputs(path: PathRequest) -> list[tuple[str, str, str]]:
    """The Nix 2.35 build-trace entries written for ``path``: (key, drv basename, output name), sorted by key.

    One per output name of the path's realisations that are its deriver's (their id is its hash modulo, proven by
    the .drv sent: uploads/drvproof.py), under its deriver: Nix up to 2.34 records the derivation it built (for a
    derivation with content-addressed inputs, the resolved one) as the output's deriver, and 2.35 looks an output
    up under that derivation (docs/protocol.md 4.4). And those a 2.35 store recorded itself, sent as
    ``build_trace``. Every one names ``path`` as its output (rule 7).
    """
    entries = set(path.build_trace)
    if path.deriver is not None:
        entries |= {(path.deriver.basename, parse_realisation_id(i)[1]) for i in path.deriver_ids}
    return sorted((build_trace_key(drv, output), drv, output) for drv, output in entries)


def wanted_objects(path: PathRequest, *, published: bool) -> list[WantedObject]:
    """The keys a session claims for ``path``: only its narinfo if it is already published, else everything."""
    objects = [WantedObject(narinfo_key(path.path.hash), "narinfo", 0)]
    if published:
        return objects
    objects.append(WantedObject(nar_key(path.nar_hash, "zstd"), "nar", path.nar_size))
    if path.listing:
        objects.append(WantedObject(ls_key(path.path.hash), "ls", 0))
    if path.log_proven and path.deriver is not None:
        objects.append(WantedObject(log_key(path.deriver.basename), "log", 0))
    objects.extend(WantedObject(realisation_key(r.id), "realisation", 0) for r in path.realisations)
    objects.extend(WantedObject(key, "realisation", 0) for key, _, _ in build_trace_outputs(path))
    return objects


def initial_part_count(nar_size: int, part_size: int) -> int:
    """How many part URLs to hand out at first: enough for a NAR that does not compress, capped."""
    worst = nar_size + nar_size // 128 + 64 * 1024  # zstd's worst-case expansion, generously
    return max(1, min(_INITIAL_PARTS, -(-worst // part_size)))


def _request_json(req: PresignedRequest) -> dict[str, Any]:
    return {"url": req.url, "method": req.method, "headers": dict(req.headers)}


async def object_spec(
    bucket: Bucket,
    s3: S3Settings,
    obj: WantedObject,
    *,
    session_id: uuid.UUID,
    state: str,
    uploader: bool,
    upload_id: str | None,
    parts: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The JSON an upload client gets for one object (docs/api.md, "action").

    ``key`` is the key the object is published under; the presigned requests write the session's staging key
    for it, from which niks3d copies it into place after its checks (docs/security.md, rule 2).
    """
    spec: dict[str, Any] = {"kind": obj.kind, "key": obj.key}
    if state == "present":
        return {**spec, "action": "none", "reason": "present"}
    if not uploader:
        return {**spec, "action": "none", "reason": "in_progress"}
    content_type, content_encoding = CONTENT_TYPES[obj.kind]
    if upload_id is None:
        staged = staging_key(str(session_id), obj.key)
        req = await bucket.presign_put(staged, content_type=content_type, content_encoding=content_encoding)
        return {**spec, "action": "put", **_request_json(req)}
    staged = staging_key(str(session_id), obj.key)
    numbers = parts if parts is not None else range(1, initial_part_count(obj.nar_size, s3.multipart_part_size) + 1)
    return {
        **spec,
        "action": "multipart",
        "upload_id": upload_id,
        "part_size": s3.multipart_part_size,
        "parts": [
            {"part_number": n, **_request_json(await bucket.presign_part(staged, upload_id, n))} for n in numbers
        ],
    }
