"""``GET /api/v1/info``: who we are and what we speak, so a client can refuse a server it does not understand."""

from __future__ import annotations

__all__ = ["API_VERSIONS", "info"]

from aiohttp import web

from niks3d import __version__
from niks3d.server.keys import config_key
from niks3d.uploads.request import MAX_PARTS, MAX_PATHS_PER_SESSION

API_VERSIONS = (1,)


async def info(request: web.Request) -> web.Response:
    config = request.app[config_key]
    s = config.settings
    return web.json_response(
        {
            "service": "niks3d",
            "version": __version__,
            "api_versions": list(API_VERSIONS),
            "capabilities": [
                "sessions",
                "multipart",
                "logs",
                "realisations",
                "pins",
                "upstream",
                "log-proof",
                "build-trace",
            ],
            "store_dir": s.cache.store_dir,
            "compression": "zstd",
            "limits": {
                "max_body_bytes": s.server.max_body_bytes,
                "max_paths_per_session": MAX_PATHS_PER_SESSION,
                "multipart_threshold": s.s3.multipart_threshold,
                "part_size": s.s3.multipart_part_size,
                "max_parts": MAX_PARTS,
            },
            "public_keys": [k.public_key().to_text() for k in config.secrets.signing_keys],
            # the keys whose signatures prove a push's upstream references (docs/api.md)
            "upstream_keys": list(s.cache.upstream_keys),
        }
    )
