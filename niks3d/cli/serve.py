"""``niks3d serve``: run the daemon, under systemd (socket activation, notify, watchdog) or by hand.

READY=1 is sent only after migrations ran, the bucket answered and the sites listen. SIGTERM (or SIGINT)
sends STOPPING=1, stops accepting, lets requests in flight finish within ``server.drain_seconds``, then exits.
"""

from __future__ import annotations

__all__ = ["bind_sites", "serve", "serve_command"]

import argparse
import asyncio
import contextlib
import logging
import signal
import socket

from aiohttp import web

from niks3d import eventloop
from niks3d.config import Config, load_config
from niks3d.db.pool import ping
from niks3d.logsetup import setup_logging
from niks3d.server.app import create_app
from niks3d.server.keys import pool_key
from niks3d.systemd import Notifier, listen_fds, run_watchdog, watchdog_interval

logger = logging.getLogger(__name__)


def _tcp_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means all interfaces, as written
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def bind_sites(runner: web.AppRunner, listen: list[str]) -> list[str]:
    """Start sites on the inherited sockets if socket-activated, else on the configured addresses."""
    inherited = listen_fds()
    names: list[str] = []
    if inherited:
        for sock in inherited:
            sock.setblocking(False)
            inherited_site = web.SockSite(runner, sock)
            await inherited_site.start()
            names.append(inherited_site.name)
        logger.info("socket-activated: listening on %s", ", ".join(names))
        return names
    for address in listen:
        if address.startswith("unix:"):
            site: web.BaseSite = web.UnixSite(runner, address[5:])
        else:
            site = web.SockSite(runner, _tcp_socket(address))
        await site.start()
        names.append(site.name)
    logger.info("listening on %s", ", ".join(names))
    return names


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    notifier = Notifier()
    notifier.status("starting: database, migrations, bucket")
    app = create_app(config)
    server = config.settings.server
    # keepalive_timeout closes a connection that has no complete request for server.idle_timeout seconds, from
    # the moment it opens or its last answer ended: idle, half-sent headers and idle keep-alive alike.
    runner = web.AppRunner(
        app, shutdown_timeout=server.drain_seconds, access_log=None, keepalive_timeout=server.idle_timeout
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog: asyncio.Task[None] | None = None
    try:
        names = await bind_sites(runner, config.settings.server.listen)
        interval = watchdog_interval()
        if interval is not None:
            pool = app[pool_key]
            watchdog = asyncio.create_task(run_watchdog(notifier, interval, lambda: ping(pool, interval / 2)))
        notifier.ready()
        notifier.status(f"serving on {', '.join(names)}")
        logger.info("niks3d ready", extra={"event": "server.ready", "fields": {"listen": ", ".join(names)}})
        if ready is not None:
            ready.set()
        await stop.wait()
        notifier.stopping()
        notifier.status("stopping: draining requests")
        logger.info("stopping: draining requests for up to %.0fs", config.settings.server.drain_seconds)
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    logger.info("stopped", extra={"event": "server.stopped", "fields": {}})


def serve_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(getattr(args, "log_level", None) or config.settings.logging.level, config.settings.logging.format)
    eventloop.run(serve(config))
    return 0
