"""Turning botocore and aiohttp failures into StorageErrors that name the bucket key and the cause.

botocore has already retried throttling and transient errors (``retries`` in the client config) by the time an
exception reaches this module; what is left is mapped once, here:

- ``NoSuchKey`` (and a bare 404 from HEAD/GET) becomes :class:`~niks3d.errors.ObjectNotFound`;
- ``NoSuchUpload`` becomes :class:`UploadNotFound`, and 416/``InvalidRange`` :class:`RangeNotSatisfiable`;
- 429, 503 and the throttling codes (``SlowDown``, ...) become :class:`~niks3d.errors.StorageThrottled` with
  the server's ``Retry-After`` when it sent one, else :data:`DEFAULT_RETRY_AFTER`;
- an endpoint that cannot be reached or stops answering (connection errors, timeouts, the deadline of one call)
  becomes :class:`~niks3d.errors.StorageUnavailable`;
- everything else becomes a plain :class:`~niks3d.errors.StorageError` whose message names the operation, the
  bucket, the key, S3's status and code, and a hint for the codes an operator can fix (wrong keys, clock
  skew).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "RangeNotSatisfiable",
    "UploadNotFound",
    "answer_error",
    "error_code",
    "error_status",
    "is_throttle",
    "is_throttle_answer",
    "retry_after_of",
    "storage_errors",
    "translate_error",
]

import email.utils
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from niks3d.errors import ObjectNotFound, StorageError, StorageThrottled, StorageUnavailable
from niks3d.storage.models import size_from_content_range

# Seconds a caller is told to wait when S3 throttled us and did not say for how long.
DEFAULT_RETRY_AFTER = 5.0
_MAX_RETRY_AFTER = 300.0

_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)

# Codes whose cause an operator can fix, with what to check.
_HINTS = {
    "InvalidAccessKeyId": "the access key id is unknown to the S3 server",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "AccessDenied": "the credentials lack a permission this operation needs (see docs/storage.md)",
    "AllAccessDisabled": "all access to this bucket has been disabled",
    "RequestTimeTooSkewed": "this machine's clock differs too much from the S3 server's",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is malformed or invalid",
    "NoSuchBucket": "the bucket does not exist",
    "PermanentRedirect": "the bucket lives in another region or needs another endpoint (check s3.region)",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region (check s3.region)",
}


class RangeNotSatisfiable(StorageError):
    """A ranged GET asked for bytes the object does not have; ``size`` is its length when S3 said."""

    def __init__(self, key: str, size: int | None) -> None:
        self.key = key
        self.size = size
        length = "unknown length" if size is None else f"{size} bytes"
        super().__init__(f"requested range of object {key!r} ({length}) is not satisfiable")


class UploadNotFound(StorageError):
    """A multipart upload id is unknown to S3: never started, completed, or aborted."""

    def __init__(self, key: str, upload_id: str) -> None:
        self.key = key
        self.upload_id = upload_id
        super().__init__(f"multipart upload {upload_id!r} of object {key!r} does not exist")


def error_code(exc: ClientError) -> str:
    """S3's error code (``NoSuchKey``, ``SlowDown``...), or the status as a string for bodiless answers."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_status(exc: ClientError) -> int:
    """The HTTP status of the answer that raised ``exc``."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _header(exc: ClientError, name: str) -> str | None:
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get(name)
    return None if value is None else str(value)


def _retry_after(exc: ClientError) -> float:
    return retry_after_of(_header(exc, "retry-after"))


def retry_after_of(raw: str | None) -> float:
    """A Retry-After value (seconds or an HTTP date), clamped to [1, 300] s; the default without one."""
    if raw is None:
        return DEFAULT_RETRY_AFTER
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
    return min(max(seconds, 1.0), _MAX_RETRY_AFTER)


def is_throttle(exc: ClientError) -> bool:
    """Whether S3 refused because of load (429, 503, or a throttling code) rather than the request itself."""
    return is_throttle_answer(error_status(exc), error_code(exc))


def is_throttle_answer(status: int, code: str) -> bool:
    """The throttling rule for any S3 answer: botocore's (:func:`is_throttle`) and a presigned request's."""
    return status in (429, 503) or code in _THROTTLE_CODES


def answer_error(what: str, key: str, status: int, code: str, headers: Mapping[str, str]) -> StorageError:
    """The StorageError for an S3 error answer to a plain HTTP request (a presigned GET of ``key``), by the
    same rules as botocore's: not found, bad range, throttling with S3's Retry-After, anything else."""
    if status == 404 or (status == 403 and code in ("AccessDenied", "NoSuchKey")):
        return ObjectNotFound(key)
    if status == 416 or code == "InvalidRange":
        return RangeNotSatisfiable(key, size_from_content_range(headers.get("Content-Range")))
    if is_throttle_answer(status, code):
        return StorageThrottled(
            f"{what}: S3 is throttling ({status} {code})".replace(" )", ")"), retry_after_of(headers.get("Retry-After"))
        )
    return StorageError(f"{what} failed: S3 answered {status} {code}".rstrip())


def _what(operation: str, bucket: str, key: str | None) -> str:
    if key is None:
        return f"{operation} on bucket {bucket!r}"
    return f"{operation} of {key!r} in bucket {bucket!r}"


def _translate_client_error(
    exc: ClientError, operation: str, bucket: str, key: str | None, upload_id: str | None
) -> StorageError:
    code = error_code(exc)
    status = error_status(exc)
    what = _what(operation, bucket, key)
    if key is not None and (code in ("NoSuchKey", "NotFound") or (status == 404 and code == "404")):
        return ObjectNotFound(key)
    if key is not None and upload_id is not None and code == "NoSuchUpload":
        return UploadNotFound(key, upload_id)
    if key is not None and (status == 416 or code == "InvalidRange"):
        return RangeNotSatisfiable(key, size_from_content_range(_header(exc, "content-range")))
    if is_throttle(exc):
        retries = int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return StorageThrottled(
            f"S3 is throttling requests ({status} {code}, {retries + 1} attempts): {what}", _retry_after(exc)
        )
    detail = _HINTS.get(code) or str(exc.response.get("Error", {}).get("Message", "")).strip()
    # Bodiless answers (HEAD) carry no code; botocore then repeats the status as the code.
    label = f"{status} {code}" if code and code != str(status) else str(status)
    message = f"{what} failed: S3 answered {label}"
    return StorageError(f"{message}: {detail}" if detail else message)


def translate_error(
    exc: BaseException, *, operation: str, bucket: str, key: str | None = None, upload_id: str | None = None
) -> StorageError:
    """The :class:`StorageError` that says what ``exc`` means for ``operation`` on ``key`` in ``bucket``."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, operation, bucket, key, upload_id)
    what = _what(operation, bucket, key)
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{what} failed: no S3 credentials; set s3.access_key_id_file and s3.secret_access_key_file, "
            "or provide credentials through the AWS default chain (environment, profile, instance role)"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return StorageUnavailable(f"{what} failed: cannot reach the S3 endpoint: {exc}")
    if isinstance(exc, ReadTimeoutError):
        return StorageUnavailable(f"{what} failed: the S3 endpoint stopped answering: {exc}")
    if isinstance(exc, aiohttp.ClientConnectionError):
        reason = str(exc) or type(exc).__name__
        return StorageUnavailable(f"{what} failed: the connection to the S3 endpoint failed: {reason}")
    if isinstance(exc, TimeoutError):  # the deadline of one call (deadline.py, core.py), retries included
        return StorageUnavailable(f"{what} failed: no answer from S3 within s3.request_timeout")
    return StorageError(f"{what} failed: {type(exc).__name__}: {exc}")


@contextmanager
def storage_errors(operation: str, bucket: str, key: str | None = None, upload_id: str | None = None) -> Iterator[None]:
    """Re-raise botocore, aiohttp and timeout errors from the block as :class:`StorageError` (chained)."""
    try:
        yield
    except StorageError:
        raise
    except (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        raise translate_error(exc, operation=operation, bucket=bucket, key=key, upload_id=upload_id) from exc
