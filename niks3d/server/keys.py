"""Typed keys for the state kept on the aiohttp application and requests."""

from __future__ import annotations

__all__ = [
    "bucket_key",
    "collector_key",
    "config_key",
    "figures_key",
    "metrics_key",
    "pool_key",
    "proxy_key",
    "push_key",
]

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import asyncpg

    from niks3d.config import Config
    from niks3d.gc.background import BackgroundCollector
    from niks3d.server.figures import FiguresReader
    from niks3d.server.metrics import Metrics
    from niks3d.server.proxy import ReadProxy
    from niks3d.storage.s3 import Bucket
    from niks3d.uploads.context import PushContext

config_key: web.AppKey[Config] = web.AppKey("config_key")
pool_key: web.AppKey[asyncpg.Pool] = web.AppKey("pool_key")
bucket_key: web.AppKey[Bucket] = web.AppKey("bucket_key")
push_key: web.AppKey[PushContext] = web.AppKey("push_key")
metrics_key: web.AppKey[Metrics] = web.AppKey("metrics_key")
# The read proxy's state (set only when server.read_proxy is not "off"), and the figures of the landing page.
proxy_key: web.AppKey[ReadProxy] = web.AppKey("proxy_key")
figures_key: web.AppKey[FiguresReader] = web.AppKey("figures_key")
# The garbage collector running in this daemon (niks3d.server.gc).
collector_key: web.AppKey[BackgroundCollector] = web.AppKey("collector_key")
