"""What the push domain needs from the running daemon: the pool, the bucket, the settings and the signing keys."""

from __future__ import annotations

__all__ = ["SESSION_STALE_AFTER", "PushContext"]

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

    from niks3d.config import Settings
    from niks3d.nix.signing import SecretKey
    from niks3d.storage.s3 import Bucket

# An open session that made no call for this long is no longer trusted to finish the uploads it claimed:
# another session that needs the same objects may take them over. Clients call at least once a minute.
SESSION_STALE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class PushContext:
    pool: asyncpg.Pool
    bucket: Bucket
    settings: Settings
    signing_keys: tuple[SecretKey, ...]
