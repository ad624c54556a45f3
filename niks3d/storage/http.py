"""The plain aiohttp sessions niks3d sends presigned S3 requests through, built in one place.

Presigned requests through aiohttp cost about half of a botocore call, so two hot paths use them, each with a
pool of its own, for a reason:

* the bucket's pool (:func:`niks3d.storage.s3.open_bucket`, ``max_pool_connections``): short requests of the
  push path, the HEAD of every uploaded object (:mod:`niks3d.storage.core`);
* the read proxy's pool (:func:`niks3d.server.relay.open_relay`, 256 connections, 1 MiB read buffer): NAR
  bodies streamed to Nix clients, each connection held for as long as its client reads. Apart, slow readers
  cannot take the connections that pushes need, and a burst of pushes does not stall downloads.

Both answer no proxies from the environment, send no ``Accept-Encoding`` (bodies pass through as stored) and
map their errors with :mod:`niks3d.storage.errors`.
"""

from __future__ import annotations

__all__ = ["presigned_session"]

import aiohttp


def presigned_session(
    *,
    connections: int,
    connect_timeout: float,
    read_timeout: float,
    pool_wait: float | None = None,
    read_bufsize: int = 2**16,
) -> aiohttp.ClientSession:
    """A session for presigned requests: at most ``connections`` at once, ``connect_timeout`` to open one (and,
    with ``pool_wait``, at most that long waiting for a free one plus connecting), ``read_timeout`` between
    two reads, no limit on a whole request (a NAR takes as long as it takes). Use it with ``async with``."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=pool_wait, sock_connect=connect_timeout, sock_read=read_timeout
        ),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        read_bufsize=read_bufsize,
    )
