"""``niks3d serve``: run the daemon, under systemd (socket activation, notify, watchdog) or by hand.

READY=1 is sent only after migrations ran, the bucket answered and the sites listen. SIGTERM (or SIGINT)
sends STOPPING=1, stops accepting, lets requests in flight finish within ``server.drain_seconds``, then exits.

With ``[tls]`` the TCP listeners speak HTTPS (Unix sockets stay plain HTTP). SIGHUP reloads the TLS files
(:class:`niks3d.tls.ServerTls`) without closing a listener, between ``RELOADING=1`` and ``READY=1`` as sd_notify(3)
asks; a reload that fails is logged and keeps the files in use. Without ``[tls]`` SIGHUP has nothing to reload
and is only logged (it no longer ends the process).
"""

from __future__ import annotations

__all__ = ["bind_sites", "serve", "serve_command"]

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl

from aiohttp import web

from niks3d import eventloop
from niks3d.config import Config, load_config
from niks3d.db.pool import ping
from niks3d.errors import ConfigError
from niks3d.heap import settle
from niks3d.logsetup import log_event, setup_logging
from niks3d.server.app import create_app
from niks3d.server.keys import pool_key
from niks3d.systemd import Notifier, listen_fds, run_watchdog, watchdog_interval
from niks3d.tls import ServerTls

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


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


async def bind_sites(runner: web.AppRunner, listen: list[str], tls: ssl.SSLContext | None = None) -> list[str]:
    """Start sites on the inherited sockets if socket-activated, else on the configured addresses.

    With ``tls`` the TCP sites serve HTTPS; Unix sockets stay plain HTTP.
    """
    inherited = listen_fds()
    names: list[str] = []
    if inherited:
        for sock in inherited:
            sock.setblocking(False)
            inherited_site = web.SockSite(runner, sock, ssl_context=tls if _is_tcp(sock) else None)
            await inherited_site.start()
            names.append(inherited_site.name)
        logger.info("socket-activated: listening on %s", ", ".join(names))
        return names
    for address in listen:
        if address.startswith("unix:"):
            site: web.BaseSite = web.UnixSite(runner, address[5:])
        else:
            site = web.SockSite(runner, _tcp_socket(address), ssl_context=tls)
        await site.start()
        names.append(site.name)
    logger.info("listening on %s", ", ".join(names))
    return names


async def serve(config: Config, *, ready: asyncio.Event | None = None, migrate: bool = True) -> None:
    """Run until SIGTERM/SIGINT. ``migrate=False`` (``--no-migrate``): the schema must already be up to date."""
    notifier = Notifier()
    notifier.status("starting: database, migrations, bucket" if migrate else "starting: database, bucket")
    app = create_app(config, run_migrations=migrate)
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
    tls = ServerTls(config.secrets.tls, source=str(config.source)) if config.secrets.tls is not None else None
    names: list[str] = []

    def reload() -> None:
        # Before READY=1 there is nothing to tell systemd; the reload itself is the same.
        if names:
            notifier.reloading()
            notifier.status("reloading the TLS files")
        _reload_tls(tls)
        if names:
            notifier.ready()
            notifier.status(f"serving on {', '.join(names)}")

    loop.add_signal_handler(signal.SIGHUP, reload)
    watchdog: asyncio.Task[None] | None = None
    try:
        names = await bind_sites(runner, config.settings.server.listen, tls.context if tls is not None else None)
        interval = watchdog_interval()
        if interval is not None:
            pool = app[pool_key]
            watchdog = asyncio.create_task(run_watchdog(notifier, interval, lambda: ping(pool, interval / 2)))
        notifier.ready()
        notifier.status(f"serving on {', '.join(names)}")
        settle()  # what start-up made (modules, the application) leaves the garbage collector's walks (niks3d/heap.py)
        log_event(logger, logging.INFO, "server.ready", "niks3d ready", listen=", ".join(names))
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
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log_event(logger, logging.INFO, "server.stopped", "stopped")


def _reload_tls(tls: ServerTls | None) -> None:
    if tls is None:
        log_event(logger, logging.INFO, "server.reload", "SIGHUP: nothing to reload (no [tls] section)", tls=False)
        return
    try:
        tls.reload()
    except ConfigError as exc:
        log_event(
            logger,
            logging.ERROR,
            "tls.reload_failed",
            "SIGHUP: the TLS files did not load; new connections keep the previous ones: %s",
            exc,
            problems=len(exc.problems),
        )
        return
    log_event(
        logger,
        logging.INFO,
        "tls.reloaded",
        "SIGHUP: reloaded %s and %s%s for new connections",
        tls.files.certificate,
        tls.files.key,
        f" and {tls.files.client_ca}" if tls.files.client_ca else "",
        reloads=tls.reloads,
    )


def serve_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(getattr(args, "log_level", None) or config.settings.logging.level, config.settings.logging.format)
    eventloop.run(serve(config, migrate=not getattr(args, "no_migrate", False)))
    return 0
