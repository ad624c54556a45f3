"""The application factory: ``create_app(config)`` wires every resource as a cleanup context.

Start-up order: the database pool, migrations (under their lock; only the schema check with ``serve --no-migrate``),
the bucket check and ``nix-cache-info``; only then does the runner start its sites and the caller send ``READY=1``.
"""

from __future__ import annotations

__all__ = ["create_app"]

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from niks3d.config import Config
from niks3d.db.migrate import check_schema, migrate
from niks3d.db.pool import open_pool
from niks3d.nix.narinfo import render_nix_cache_info
from niks3d.server.auth import TokenTable, tokens_key
from niks3d.server.clientcerts import CertificateRules, certificate_rules_key
from niks3d.server.errors import error_middleware
from niks3d.server.figures import FiguresReader
from niks3d.server.gc import gc_context
from niks3d.server.keys import (
    bucket_key,
    config_key,
    figures_key,
    pool_key,
    push_key,
)
from niks3d.server.metrics import Metrics, metrics_key
from niks3d.server.oidc import oidc_context, oidc_middleware
from niks3d.server.proxy import open_read_proxy, proxy_key
from niks3d.server.routes import setup_routes
from niks3d.storage.cacheinfo import ensure_nix_cache_info
from niks3d.storage.s3 import open_bucket
from niks3d.uploads.context import PushContext

logger = logging.getLogger(__name__)


def create_app(config: Config, *, run_migrations: bool = True) -> web.Application:
    settings = config.settings
    metrics = Metrics()
    # The metrics middleware sits outside the error middleware, so it counts the status the client got.
    middlewares = [error_middleware] if settings.server.metrics == "off" else [metrics.middleware, error_middleware]
    if settings.oidc:
        # Inside the error middleware: it only records its verdict; require() raises it (docs/auth.md).
        middlewares.append(oidc_middleware)
    # Bodies reach the handlers as sent: a narinfo, listing or log PUT with a Content-Encoding is decoded once, by
    # niks3d (server/writes.py, bounded), not first by aiohttp (which decoded gzip, so niks3d's gunzip failed,
    # and refused zstd without a module we do not depend on).
    app = web.Application(
        middlewares=middlewares,
        client_max_size=settings.server.max_body_bytes,
        handler_args={"auto_decompress": False},
    )
    app[config_key] = config
    app[metrics_key] = metrics
    app[tokens_key] = TokenTable(config.secrets.tokens)
    app[certificate_rules_key] = CertificateRules(settings.tls.clients if settings.tls is not None else ())

    async def database(app: web.Application) -> AsyncIterator[None]:
        async with open_pool(settings.database, config.secrets.database_password) as pool:
            if run_migrations:
                applied = await migrate(pool)
                if applied:
                    logger.info("applied migrations: %s", ", ".join(applied))
            else:  # `niks3d migrate` ran before (the NixOS module's ExecStartPre): refuse a schema it did not finish
                await check_schema(pool)
            app[pool_key] = pool
            yield

    async def storage(app: web.Application) -> AsyncIterator[None]:
        async with open_bucket(
            settings.s3, config.secrets.s3_access_key_id, config.secrets.s3_secret_access_key
        ) as bucket:
            await bucket.check()
            text = render_nix_cache_info(
                settings.cache.store_dir, settings.cache.want_mass_query, settings.cache.priority
            )
            if await ensure_nix_cache_info(bucket, text):
                logger.info("wrote nix-cache-info to bucket %s", bucket.name)
            app[bucket_key] = bucket
            app[push_key] = PushContext(
                pool=app[pool_key],
                bucket=bucket,
                settings=settings,
                signing_keys=config.secrets.signing_keys,
                upstream_keys=settings.cache.upstream_public_keys(),
                verify_slots=asyncio.Semaphore(settings.s3.verify_concurrency),
            )
            yield

    async def read_side(app: web.Application) -> AsyncIterator[None]:
        """The landing page's figures, and the read proxy (narinfo cache, S3 relay) unless it is off."""
        figures = app[figures_key] = FiguresReader(app[pool_key])
        if settings.server.read_proxy == "off":
            metrics.watch(None, figures)
            yield
            return
        async with open_read_proxy(config, app[pool_key], app[bucket_key]) as proxy:
            app[proxy_key] = proxy
            metrics.watch(proxy.cache, figures)
            yield

    if settings.oidc:
        app.cleanup_ctx.append(oidc_context(config))
    app.cleanup_ctx.extend([database, storage, read_side, gc_context])
    setup_routes(app)
    return app
