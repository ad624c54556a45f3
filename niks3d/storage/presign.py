"""Presigning without aiobotocore's request pipeline, for the URLs niks3d signs on every pushed path.

aiobotocore's ``generate_presigned_url`` builds a whole request (parameter validation, endpoint rules, events,
the signer's coroutines) to produce what is only the object's address plus a SigV4 query signature: about
130-150 µs of CPU each, and a push signs five per path (the client's two upload URLs, niks3d's own HEADs and
narinfo PUT). With static keys the address of a key is the bucket's address, learned once from a URL that
aiobotocore presigned, plus the key percent-encoded as botocore encodes it; the signature is botocore's own
SigV4 query signer (``S3SigV4QueryAuth``), about 45 µs. The URL is the same one aiobotocore would make
(tests/storage/test_presign.py compares them). Credentials of the default chain may be refreshed, and a URL
with query parameters of its own (a part upload) is signed the long way: both still go through aiobotocore.
"""

from __future__ import annotations

__all__ = ["QuickPresigner"]

from collections.abc import Mapping
from urllib.parse import parse_qs, quote

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# The key the bucket's address is learned with (any key would do; no request is sent).
PROBE_KEY = "niks3d-presign-probe"

# The methods signed here, as botocore names them, and their HTTP methods.
METHODS = {"head_object": "HEAD", "get_object": "GET", "put_object": "PUT", "copy_object": "PUT"}
# PutObject's parameters signed here, and the headers botocore turns them into.
PUT_HEADERS = {
    "ContentType": "Content-Type",
    "ContentEncoding": "Content-Encoding",
    "CacheControl": "Cache-Control",
    "ChecksumSHA256": "x-amz-checksum-sha256",
}
# CopyObject's (besides CopySource).
COPY_HEADERS = {
    "ContentType": "Content-Type",
    "ContentEncoding": "Content-Encoding",
    "MetadataDirective": "x-amz-metadata-directive",
}


def request_headers(client_method: str, params: Mapping[str, object]) -> dict[str, str] | None:
    """The headers that carry ``params`` (besides Bucket and Key) of ``client_method``, as botocore sends and signs
    them; None for a method or parameter this module does not sign."""
    names = PUT_HEADERS if client_method == "put_object" else COPY_HEADERS if client_method == "copy_object" else {}
    headers: dict[str, str] = {}
    for name, value in params.items():
        if name in ("Bucket", "Key"):
            continue
        if name == "CopySource" and client_method == "copy_object" and isinstance(value, Mapping):
            source_bucket, source_key = value.get("Bucket"), value.get("Key")
            if not isinstance(source_bucket, str) or not isinstance(source_key, str) or set(value) - {"Bucket", "Key"}:
                return None
            headers["x-amz-copy-source"] = quote(f"{source_bucket}/{source_key}", safe="-._~/")
            continue
        header = names.get(name)
        if header is None or not isinstance(value, str):
            return None
        headers[header] = value
    if client_method == "copy_object" and "x-amz-copy-source" not in headers:
        return None
    return headers


class QuickPresigner:
    """Presigns HEAD, GET, PUT (with :data:`PUT_HEADERS`) and CopyObject of keys of one bucket at one address."""

    __slots__ = ("_base", "_credentials", "_region")

    def __init__(self, credentials: Credentials, region: str, base: str) -> None:
        self._credentials = credentials
        self._region = region
        self._base = base  # the URL of the bucket's keys, up to the key: "http://host:port/bucket/"

    @classmethod
    def from_probe(cls, credentials: Credentials, probe_url: str) -> QuickPresigner | None:
        """From aiobotocore's presigned HEAD of :data:`PROBE_KEY`: its address and its credential scope's region
        (the region the endpoint rules chose); None if the URL is not of that shape."""
        address, _, query = probe_url.partition("?")
        scope = parse_qs(query).get("X-Amz-Credential", [""])[0].split("/")
        if (
            not address.endswith("/" + PROBE_KEY)
            or "#" in probe_url
            or len(scope) < 5
            or scope[-2:] != ["s3", "aws4_request"]
        ):
            return None
        if scope[0] != credentials.access_key:
            return None
        return cls(credentials, scope[-3], address[: -len(PROBE_KEY)])

    def presign(self, client_method: str, params: Mapping[str, object], expires: int) -> str | None:
        """The presigned URL of ``client_method`` with ``params`` (Bucket and Key included; the request must send
        :func:`request_headers`), or None for anything this class does not sign (the caller asks aiobotocore)."""
        method = METHODS.get(client_method)
        headers = request_headers(client_method, params)
        if method is None or headers is None:
            return None
        key = params.get("Key")
        if not isinstance(key, str) or not key:
            return None
        request = AWSRequest(method=method, url=self._base + quote(key, safe="/~"), headers=headers)
        S3SigV4QueryAuth(self._credentials, "s3", self._region, expires=expires).add_auth(request)
        return str(request.url)
