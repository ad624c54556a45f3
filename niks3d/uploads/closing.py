"""Tidying the bucket after a session gives up uploads: the one helper, and its one policy for S3 failures.

A session gives up uploads in many ways: its client aborts it (``DELETE /api/v1/sessions/{id}``), GC expires
it, a forced path deletion aborts the sessions that claim the path, another push takes over an upload whose
lease ran out (the old claim stays as a waiting one), and a report finds its objects already present (another
session's copy won). Each first commits the change of the claims in the database (:mod:`niks3d.db.sessions`,
``db.uploads.take_over``); from then on the database says the uploads are given up. This module then aborts
their multipart uploads (under the session's staging keys, docs/security.md rule 2) and, where asked, deletes
the objects they staged.

**Policy:** best effort, never raising for S3. A failure is logged (a warning with the key and the S3 error)
and counted in ``cleanup_errors``; the rest goes on. The change is already true in the database, and nothing
reads a staging key, so what is left costs space only: GC's staging sweep (:mod:`niks3d.gc.staging`) deletes
the staged objects and aborts the staged multipart uploads of every session that is not open, once they are
older than the grace period (docs/gc.md).
"""

from __future__ import annotations

__all__ = ["tidy_released"]

import logging
from collections import Counter
from collections.abc import Sequence

from niks3d.db.sessions import ReleasedClaim
from niks3d.errors import StorageError
from niks3d.storage.s3 import Bucket

logger = logging.getLogger(__name__)


async def tidy_released(bucket: Bucket, claims: Sequence[ReleasedClaim], *, delete_staged: bool) -> Counter[str]:
    """Abort the multipart uploads of released ``claims``; with ``delete_staged``, also delete what their
    uploaders staged. Counts ``uploads_aborted``, ``staged_deleted`` and ``cleanup_errors``; never raises a
    StorageError (see the module's policy)."""
    counts: Counter[str] = Counter()
    for claim in claims:
        if not claim.upload_id:
            continue
        try:
            await bucket.abort_multipart(claim.staged, claim.upload_id)
        except StorageError as exc:
            counts["cleanup_errors"] += 1
            logger.warning("could not abort multipart upload %s of %s: %s", claim.upload_id, claim.staged, exc)
        else:
            counts["uploads_aborted"] += 1
    staged = [c.staged for c in claims if c.uploader] if delete_staged else []
    if staged:
        try:
            result = await bucket.delete_many(staged)
        except StorageError as exc:
            counts["cleanup_errors"] += len(staged)
            logger.warning("could not delete %d staged objects, first %s: %s", len(staged), staged[0], exc)
        else:
            counts["staged_deleted"] += len(result.deleted)
            counts["cleanup_errors"] += len(result.errors)
    return counts
