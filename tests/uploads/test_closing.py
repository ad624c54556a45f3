"""The one policy for tidying the bucket after sessions close (niks3d/uploads/closing.py): S3 failures are logged
and counted, never raised, and do not stop the rest. A fake bucket stands in for S3 here: what is tested is the
policy, not S3 (tests/gc/test_delete_path.py and the push tests run it against SeaweedFS)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, cast

import pytest

from niks3d.db.sessions import ReleasedClaim
from niks3d.errors import StorageError
from niks3d.storage.models import DeleteError, DeleteResult
from niks3d.storage.s3 import Bucket
from niks3d.uploads.closing import tidy_released


class RefusingBucket:
    """Aborts fail for the upload ids in ``refuse``; deletes refuse the keys in ``refuse_keys``."""

    def __init__(self, refuse: set[str], refuse_keys: set[str]) -> None:
        self.refuse, self.refuse_keys = refuse, refuse_keys
        self.aborted: list[tuple[str, str]] = []
        self.deleted: list[str] = []

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        if upload_id in self.refuse:
            raise StorageError(f"AbortMultipartUpload of {key}: InternalError")
        self.aborted.append((key, upload_id))

    async def delete_many(self, keys: Sequence[str]) -> DeleteResult:
        result = DeleteResult()
        for key in keys:
            if key in self.refuse_keys:
                result.errors.append(DeleteError(key, "AccessDenied", "no"))
            else:
                result.deleted.append(key)
                self.deleted.append(key)
        return result


NAR_A, NAR_B = f"nar/{'a' * 52}.nar.zst", f"nar/{'b' * 52}.nar.zst"
NARINFO_C, NARINFO_D = f"{'c' * 32}.narinfo", f"{'d' * 32}.narinfo"


def _claims(session: uuid.UUID) -> list[ReleasedClaim]:
    return [
        ReleasedClaim(session, NAR_A, "bad", True),
        ReleasedClaim(session, NAR_B, "good", True),
        ReleasedClaim(session, NARINFO_C, None, True),
        ReleasedClaim(session, NARINFO_D, None, False),
    ]


async def test_failures_are_counted_and_logged_and_the_rest_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    session = uuid.uuid4()
    claims = _claims(session)
    fake = RefusingBucket(refuse={"bad"}, refuse_keys={claims[2].staged})
    with caplog.at_level(logging.WARNING, logger="niks3d.uploads.closing"):
        counts = await tidy_released(cast(Bucket, fake), claims, delete_staged=True)
    assert fake.aborted == [(f"staging/{session}/{NAR_B}", "good")]
    assert fake.deleted == [claims[0].staged, claims[1].staged]  # uploaders only: D's claim staged nothing
    assert counts == {"uploads_aborted": 1, "staged_deleted": 2, "cleanup_errors": 2}
    assert any("could not abort multipart upload bad" in r.getMessage() for r in caplog.records)


async def test_a_failed_delete_request_is_counted_not_raised() -> None:
    class Unreachable(RefusingBucket):
        async def delete_many(self, keys: Sequence[str]) -> Any:
            raise StorageError("DeleteObjects: connection refused")

    claims = _claims(uuid.uuid4())
    counts = await tidy_released(cast(Bucket, Unreachable(set(), set())), claims, delete_staged=True)
    assert counts == {"uploads_aborted": 2, "cleanup_errors": 3}


async def test_without_delete_staged_only_the_multipart_uploads_go() -> None:
    fake = RefusingBucket(set(), set())
    counts = await tidy_released(cast(Bucket, fake), _claims(uuid.uuid4()), delete_staged=False)
    assert counts == {"uploads_aborted": 2} and fake.deleted == []
