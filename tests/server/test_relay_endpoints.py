"""With ``s3.public_endpoint_url`` set, the relay still reads through URLs signed for the endpoint niks3d talks to
(the fast path), while redirect mode hands clients URLs signed for the public endpoint.

Against the real SeaweedFS: the public endpoint is the same server under another host name (``localhost``
rather than ``127.0.0.1``), so that URLs of both kinds can be fetched and SigV4's signed Host checked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from niks3d.config import S3Settings
from niks3d.server.relay import open_relay
from niks3d.storage import open_bucket

pytestmark = pytest.mark.s3


async def test_relay_urls_are_signed_for_the_internal_endpoint_and_redirects_for_the_public_one(s3_bucket):
    internal = s3_bucket.endpoint_url
    public = internal.replace("127.0.0.1", "localhost")
    assert public != internal
    settings = S3Settings(
        bucket=s3_bucket.bucket, endpoint_url=internal, public_endpoint_url=public, region=s3_bucket.region
    )
    async with open_bucket(settings, s3_bucket.access_key_id, s3_bucket.secret_access_key) as bucket:
        await bucket.put("nar/x.nar.zst", b"nar bytes", content_type="application/x-nix-nar")
        async with open_relay(bucket) as relay:
            redirect = urlsplit(await relay.redirects.get("nar/x.nar.zst"))
            assert redirect.hostname == "localhost"
            upstream = await relay.open("nar/x.nar.zst")
            try:
                assert upstream.status == 200 and upstream.length == len(b"nar bytes")
                assert upstream.chunks is not None
                assert b"".join([c async for c in upstream.chunks]) == b"nar bytes"
            finally:
                await upstream.aclose()
            own = urlsplit(await relay._urls.get("nar/x.nar.zst"))
            assert own.hostname == "127.0.0.1"
            assert own.query != redirect.query  # signed for another Host
