"""What the storage layer raises when S3 refuses, is unreachable, or throttles: StorageErrors that say why."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from niks3d.config import S3Settings
from niks3d.errors import StorageError, StorageThrottled
from niks3d.server.relay import open_relay
from niks3d.storage import open_bucket
from niks3d.storage.errors import DEFAULT_RETRY_AFTER, translate_error


@pytest.mark.s3
async def test_a_wrong_secret_key_is_named_not_mistaken_for_a_missing_object(s3_settings: S3Settings, s3_bucket):
    async with open_bucket(s3_settings, s3_bucket.access_key_id, "not-the-secret") as wrong:
        with pytest.raises(StorageError, match="SignatureDoesNotMatch: the secret access key does not match"):
            await wrong.check()
        with pytest.raises(StorageError, match=r"HeadObject of 'x\.narinfo'.*SignatureDoesNotMatch"):
            await wrong.head("x.narinfo")
        with pytest.raises(StorageError, match=r"PutObject of 'x\.narinfo'.*SignatureDoesNotMatch"):
            await wrong.put("x.narinfo", b"x", content_type="text/x-nix-narinfo")


@pytest.mark.s3
async def test_an_unknown_access_key_id_is_named(s3_settings: S3Settings):
    async with open_bucket(s3_settings, "AKIDNOBODYHAS", "whatever") as unknown:
        with pytest.raises(StorageError, match="InvalidAccessKeyId: the access key id is unknown"):
            await unknown.check()
        with pytest.raises(StorageError, match="InvalidAccessKeyId"):
            await unknown.get("nix-cache-info")


@pytest.mark.s3
async def test_no_credentials_anywhere_is_named(s3_settings: S3Settings, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with open_bucket(s3_settings, None, None) as anonymous:
        with pytest.raises(StorageError, match="no S3 credentials"):
            await anonymous.check()
        with pytest.raises(StorageError, match="no S3 credentials"):
            await anonymous.presign_get("x")


async def test_half_a_key_pair_is_refused(s3_settings: S3Settings):
    with pytest.raises(StorageError, match="needs its secret"):
        async with open_bucket(s3_settings, "AKID", None):
            pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_endpoint_fails_quickly_with_a_storage_error():
    settings = S3Settings(bucket="cache", endpoint_url=f"http://127.0.0.1:{_closed_port()}", max_attempts=2)
    started = time.monotonic()
    async with open_bucket(settings, "AKID", "SECRET", connect_timeout=0.5) as down:
        with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
            await down.check()
        with pytest.raises(StorageError, match=r"HeadObject of 'abc\.narinfo'.*cannot reach"):
            await down.head("abc.narinfo")
    assert time.monotonic() - started < 10


@dataclass
class FakeS3:
    """An HTTP server on 127.0.0.1 that throttles every request; counts what it received."""

    status: int = 503
    code: str = "SlowDown"
    retry_after: str | None = None
    requests: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        headers = {"Content-Type": "application/xml"}
        if self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>Please reduce your request rate.</Message></Error>"
        )
        return web.Response(status=self.status, text=body if request.method != "HEAD" else None, headers=headers)


@pytest.fixture
async def fake_s3() -> AsyncIterator[FakeS3]:
    fake = FakeS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_slowdown_is_retried_by_botocore_then_raised_as_throttled(fake_s3: FakeS3):
    settings = S3Settings(bucket="cache", endpoint_url=fake_s3.url, max_attempts=3)
    async with open_bucket(settings, "AKID", "SECRET") as throttled:
        with pytest.raises(StorageThrottled, match=r"503 SlowDown, 3 attempts.*PutObject of 'a\.narinfo'") as caught:
            await throttled.put("a.narinfo", b"x", content_type="text/x-nix-narinfo")
    # One presigned PUT (core.py's quick path for small bodies, which leaves a 503 to botocore), then botocore's
    # three attempts: the message counts botocore's.
    assert fake_s3.requests == ["PUT /cache/a.narinfo"] * 4
    assert caught.value.retry_after == DEFAULT_RETRY_AFTER


async def test_throttled_head_is_raised_not_taken_for_absence(fake_s3: FakeS3):
    settings = S3Settings(bucket="cache", endpoint_url=fake_s3.url, max_attempts=2)
    async with open_bucket(settings, "AKID", "SECRET") as throttled:
        with pytest.raises(StorageThrottled):
            await throttled.head("a.narinfo")
    # One presigned HEAD (core.py's quick path, which leaves a 503 to botocore), then botocore's two attempts.
    assert fake_s3.requests == ["HEAD /cache/a.narinfo"] * 3


async def test_429_with_retry_after_passes_the_servers_delay_on(fake_s3: FakeS3):
    fake_s3.status, fake_s3.retry_after = 429, "7"
    settings = S3Settings(bucket="cache", endpoint_url=fake_s3.url, max_attempts=2)
    async with open_bucket(settings, "AKID", "SECRET") as throttled:
        with pytest.raises(StorageThrottled) as caught:
            await throttled.get("nar/x.nar.zst")
    # the presigned GET once, then botocore twice: SlowDown is a throttling code, botocore retried it
    assert len(fake_s3.requests) == 3
    assert caught.value.retry_after == 7.0


def _client_error(status: int, code: str, headers: dict[str, str]) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers, "RetryAttempts": 0},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, DEFAULT_RETRY_AFTER),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0"}, 1.0),
        ({"retry-after": "86400"}, 300.0),
        ({"retry-after": "not a date"}, DEFAULT_RETRY_AFTER),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1.0),  # in the past
    ],
)
def test_retry_after_is_parsed_and_bounded(headers, expected):
    error = translate_error(_client_error(503, "SlowDown", headers), operation="GetObject", bucket="b", key="k")
    assert isinstance(error, StorageThrottled)
    assert error.retry_after == expected


def test_a_plain_refusal_is_not_called_throttling():
    error = translate_error(_client_error(400, "InvalidArgument", {}), operation="GetObject", bucket="b", key="k")
    assert not isinstance(error, StorageThrottled)
    assert str(error) == "GetObject of 'k' in bucket 'b' failed: S3 answered 400 InvalidArgument: m"


def test_a_bodiless_refusal_does_not_repeat_its_status():
    error = translate_error(_client_error(403, "403", {}), operation="HeadObject", bucket="b", key="k")
    assert str(error) == "HeadObject of 'k' in bucket 'b' failed: S3 answered 403: m"


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "expected"),
    [
        (503, "SlowDown", "7", 7.0),  # S3's delay is passed on (the relay used to drop it)
        (400, "RequestLimitExceeded", None, DEFAULT_RETRY_AFTER),  # a throttling code on another status
        (429, "TooManyRequests", "120", 120.0),
    ],
)
async def test_the_read_proxys_relay_maps_throttling_like_every_other_s3_call(
    fake_s3: FakeS3, status: int, code: str, retry_after: str | None, expected: float
):
    fake_s3.status, fake_s3.code, fake_s3.retry_after = status, code, retry_after
    settings = S3Settings(bucket="cache", endpoint_url=fake_s3.url, max_attempts=1)
    async with open_bucket(settings, "AKID", "SECRET") as bucket, open_relay(bucket) as relay:
        with pytest.raises(StorageThrottled) as caught:
            await relay.open("nar/x.nar.zst")
    assert caught.value.retry_after == expected
