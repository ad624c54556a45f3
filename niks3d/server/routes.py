"""Every route of the daemon, in one table."""

from __future__ import annotations

__all__ = ["setup_routes"]

from aiohttp import web

from niks3d.server import gc, health, info, landing, metrics, pins, proxy, sessions, writes
from niks3d.server.keys import config_key


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/health", health.health),
            web.get("/ready", health.ready),
            web.get("/api/v1/info", info.info),
            web.post("/api/v1/sessions", sessions.create),
            web.get("/api/v1/sessions/{session_id}", sessions.status),
            web.delete("/api/v1/sessions/{session_id}", sessions.abort),
            web.get("/api/v1/sessions/{session_id}/paths", sessions.page),
            web.post("/api/v1/sessions/{session_id}/urls", sessions.urls),
            web.post("/api/v1/sessions/{session_id}/objects", sessions.report),
            web.post("/api/v1/sessions/{session_id}/complete", sessions.complete),
            web.get("/api/v1/pins", pins.list_pins),
            web.get("/api/v1/pins/{name}", pins.get_pin),
            web.put("/api/v1/pins/{name}", pins.put_pin),
            web.delete("/api/v1/pins/{name}", pins.delete_pin),
            web.get("/api/v1/roots/{name}", writes.get_root),
            web.delete("/api/v1/roots/{name}", writes.delete_root),
            web.post("/api/v1/gc", gc.start_run),
            web.get("/api/v1/gc", gc.list_runs),
            web.get("/api/v1/gc/{run_id}", gc.get_run),
            web.delete("/api/v1/paths/{path:.+}", gc.delete_path),
        ]
    )
    server = app[config_key].settings.server
    app.router.add_get("/", landing.landing)
    if server.metrics != "off":
        app.router.add_get("/metrics", metrics.metrics)
    if server.read_proxy != "off":
        # The cache's key space under the prefix, pattern by pattern, so that nothing else is shadowed; each
        # handler validates the whole key again (docs/proxy.md). GET routes answer HEAD too.
        # The same key space again under roots/<name>/, a named root's cache URL for `nix copy --to`; stock
        # Nix's PUTs (docs/api.md, stock Nix as a writer) go to the same patterns.
        top = "" if server.proxy_prefix == "/" else server.proxy_prefix
        for at in (top, top + "/roots/{root:[A-Za-z0-9][A-Za-z0-9._-]{0,127}}"):
            app.router.add_routes(
                [
                    web.get(f"{at}/nix-cache-info", proxy.nix_cache_info),
                    web.get(at + r"/{narinfo:[^/]+\.narinfo}", proxy.narinfo),
                    web.get(at + r"/{listing:[^/]+\.ls}", proxy.cache_file),
                    web.get(at + "/nar/{key:.*}", proxy.nar),
                    web.get(at + "/log/{key:.*}", proxy.cache_file),
                    web.get(at + "/realisations/{key:.*}", proxy.cache_file),
                    web.get(at + "/build-trace-v2/{key:.*}", proxy.cache_file),
                    web.put(f"{at}/nix-cache-info", writes.put_file),
                    web.put(at + r"/{narinfo:[^/]+\.narinfo}", writes.put_file),
                    web.put(at + r"/{listing:[^/]+\.ls}", writes.put_file),
                    web.put(at + "/nar/{key:.*}", writes.put_file),
                    web.put(at + "/log/{key:.*}", writes.put_file),
                    web.put(at + "/realisations/{key:.*}", writes.put_file),
                    web.put(at + "/build-trace-v2/{key:.*}", writes.put_file),
                ]
            )
