"""Presigning without aiobotocore's request pipeline, for the URLs niks3d signs on every pushed path.

aiobotocore's ``generate_presigned_url`` builds a whole request (parameter validation, endpoint rules, events,
the signer's coroutines) to produce what is only the object's address plus a SigV4 query signature: about
130-150 µs of CPU each, and a push signs five per path (the client's upload URL, niks3d's own HEAD, copy, NAR
read and PUTs). With static keys the address of a key is the bucket's address, learned once from a URL that
aiobotocore presigned, plus the key percent-encoded as botocore encodes it; the signature is SigV4's query form,
computed here as botocore's ``S3SigV4QueryAuth`` computes it but with the day's signing key kept (four HMACs,
the same all day): about 12 µs a URL against botocore's signer's 46 (load 5). The URL is the same one aiobotocore
would make, byte for byte (tests/storage/test_presign.py compares them under one frozen clock). Credentials of
the default chain may be refreshed, a session token or a URL with query parameters of its own (a part upload) is
signed the long way: they still go through aiobotocore.
"""

from __future__ import annotations

__all__ = ["QuickPresigner"]

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, quote

import botocore.auth
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

    __slots__ = ("_base", "_credentials", "_host", "_keys", "_path", "_region")

    def __init__(self, credentials: Credentials, region: str, base: str) -> None:
        self._credentials = credentials
        self._region = region
        self._base = base  # the URL of the bucket's keys, up to the key: "http://host:port/bucket/"
        self._host = botocore.auth._host_from_url(base)  # type: ignore[attr-defined]  # the host, as botocore signs it
        self._path = base.split("://", 1)[1].partition("/")[2]  # "bucket/" (path style) or ""
        self._keys: dict[str, bytes] = {}  # date -> SigV4 signing key (four HMACs, the same all day)

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
        if not isinstance(key, str) or not key or self._credentials.token is not None:
            return None
        return self._sign(method, quote(key, safe="/~"), headers, expires)

    def _sign(self, method: str, quoted_key: str, headers: Mapping[str, str], expires: int) -> str:
        """SigV4 query signing of S3 as botocore's S3SigV4QueryAuth does it (the same URL, byte for byte:
        tests/storage/test_presign.py), with the day's signing key kept and botocore's clock."""
        now = botocore.auth.get_current_datetime()  # type: ignore[attr-defined]  # botocore's clock: tests freeze it
        timestamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        scope = f"{day}/{self._region}/s3/aws4_request"
        signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
        signed["host"] = self._host
        names = ";".join(sorted(signed))
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={quote(f'{self._credentials.access_key}/{scope}', safe='-_.~')}"
            f"&X-Amz-Date={timestamp}&X-Amz-Expires={expires}&X-Amz-SignedHeaders={quote(names, safe='-_.~')}"
        )
        canonical = "\n".join(
            (
                method,
                "/" + self._path + quoted_key,
                "&".join(sorted(query.split("&"), key=lambda pair: pair.partition("=")[::2])),
                "".join(f"{name}:{signed[name]}\n" for name in sorted(signed)),
                names,
                "UNSIGNED-PAYLOAD",
            )
        )
        to_sign = f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self._base}{quoted_key}?{query}&X-Amz-Signature={signature}"

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self._credentials.secret_key).encode()
            for part in (day, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {day: key}
        return key
