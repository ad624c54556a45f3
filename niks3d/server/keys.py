"""Typed keys for the state kept on the aiohttp application.

A key whose value is a class of niks3d.server lives beside that class (``tokens_key`` and ``identity_key`` in
auth.py, ``metrics_key`` in metrics.py, ``proxy_key`` in proxy.py), so that this module imports no server module
that imports it."""

from __future__ import annotations

__all__ = [
    "bucket_key",
    "collector_key",
    "config_key",
    "figures_key",
    "pool_key",
    "push_key",
]

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import asyncpg

    from niks3d.config import Config
    from niks3d.gc.background import BackgroundCollector
    from niks3d.server.figures import FiguresReader
    from niks3d.storage.s3 import Bucket
    from niks3d.uploads.context import PushContext

config_key: web.AppKey[Config] = web.AppKey("config_key")
pool_key: web.AppKey[asyncpg.Pool] = web.AppKey("pool_key")
bucket_key: web.AppKey[Bucket] = web.AppKey("bucket_key")
push_key: web.AppKey[PushContext] = web.AppKey("push_key")
# The figures of the landing page and /metrics.
figures_key: web.AppKey[FiguresReader] = web.AppKey("figures_key")
# The garbage collector running in this daemon (niks3d.server.gc).
collector_key: web.AppKey[BackgroundCollector] = web.AppKey("collector_key")
