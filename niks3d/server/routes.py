"""Every route of the daemon, in one table."""

from __future__ import annotations

__all__ = ["setup_routes"]

from aiohttp import web

from niks3d.server import health, info, pins, sessions


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/health", health.health),
            web.get("/ready", health.ready),
            web.get("/api/v1/info", info.info),
            web.post("/api/v1/sessions", sessions.create),
            web.get("/api/v1/sessions/{session_id}", sessions.status),
            web.delete("/api/v1/sessions/{session_id}", sessions.abort),
            web.post("/api/v1/sessions/{session_id}/urls", sessions.urls),
            web.post("/api/v1/sessions/{session_id}/objects", sessions.report),
            web.post("/api/v1/sessions/{session_id}/complete", sessions.complete),
            web.get("/api/v1/pins", pins.list_pins),
            web.get("/api/v1/pins/{name}", pins.get_pin),
            web.put("/api/v1/pins/{name}", pins.put_pin),
            web.delete("/api/v1/pins/{name}", pins.delete_pin),
        ]
    )
