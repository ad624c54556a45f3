"""What the push domain needs from the running daemon: the pool, the bucket, the settings, the signing keys, and
the requests of the sessions it is serving, parsed once."""

from __future__ import annotations

__all__ = ["PushContext", "RequestCache"]

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from niks3d.uploads.request import SessionRequest

if TYPE_CHECKING:
    import asyncpg

    from niks3d.config import Settings
    from niks3d.nix.signing import PublicKey, SecretKey
    from niks3d.storage.s3 import Bucket

# Sessions whose parsed request is kept; a push calls for one session at a time, a busy daemon for a few dozen.
REQUEST_CACHE_SIZE = 64
# ... and at most this many paths in all: a parsed path costs about 400 bytes (40 MiB for a session of 100,000,
# measured from /proc), so 64 of the largest sessions would have held 2.5 GiB (issue 20).
REQUEST_CACHE_PATHS = 250_000


class RequestCache:
    """Parsed session requests by session id, the most recently used kept.

    A session's request is stored once, when the session is created, and never changes, so what was parsed
    for an id stays right. Parsing is not free (about 60 µs a path), and every report, URL refresh and
    ``complete`` of a push needs the request: for a closure of thousands of paths, parsing it on every call
    cost more than the call's own work.
    """

    def __init__(self, size: int = REQUEST_CACHE_SIZE, max_paths: int = REQUEST_CACHE_PATHS) -> None:
        self._size = size
        self._max_paths = max_paths
        self._paths = 0
        self._parsed: OrderedDict[uuid.UUID, SessionRequest] = OrderedDict()

    @property
    def paths(self) -> int:
        """Paths of the requests kept now."""
        return self._paths

    def get(self, session_id: uuid.UUID, stored: Mapping[str, Any]) -> SessionRequest:
        """The request of session ``session_id``, parsed from ``stored`` (its row's JSON) on first use."""
        parsed = self._parsed.get(session_id)
        if parsed is None:
            parsed = SessionRequest.from_json(stored)
            self._parsed[session_id] = parsed
            self._paths += len(parsed.paths)
            # The least recently used go first; the one just parsed stays, however large.
            while len(self._parsed) > 1 and (len(self._parsed) > self._size or self._paths > self._max_paths):
                _, dropped = self._parsed.popitem(last=False)
                self._paths -= len(dropped.paths)
        else:
            self._parsed.move_to_end(session_id)
        return parsed


@dataclass(frozen=True, slots=True)
class PushContext:
    pool: asyncpg.Pool
    bucket: Bucket
    settings: Settings
    signing_keys: tuple[SecretKey, ...]
    requests: RequestCache = field(default_factory=RequestCache)
    # Bounds the full verifications running at once in this daemon (s3.verify_concurrency).
    verify_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    # cache.upstream_keys, parsed: the keys that prove a push's upstream references (uploads/upstream.py)
    upstream_keys: tuple[PublicKey, ...] = ()
