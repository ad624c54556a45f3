"""Raw HTTP for read-proxy tests: exact request targets (no client-side normalization), every header seen."""

from __future__ import annotations

import base64
import http.client
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.server.pushkit import FakePath, PushKit, make_closure, make_path

__all__ = ["FakePath", "Reply", "basic", "fetch", "make_path", "push", "push_closure"]


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes
    complete: bool  # False if the body ended before its Content-Length (or chunked end)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def fetch(base_url: str, target: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """Send ``target`` byte for byte (http.client does not normalize it) and read the whole answer."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        return Reply(response.status, response.msg, body, complete)
    finally:
        conn.close()


def basic(password: str, user: str = "nix") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def push_closure(daemon: Any, tmp_path: Path, *, seed: int, n: int = 3, **kwargs: Any) -> list[FakePath]:
    """Push a small closure (with build logs) through the API and return its paths."""
    paths = make_closure(tmp_path, seed=seed, n=n, log=True, **kwargs)
    await push(daemon, paths)
    return paths


async def push(daemon: Any, paths: list[FakePath]) -> None:
    """Push ``paths`` (roots: the last one) with the pusher token."""
    async with aiohttp.ClientSession() as http_session:
        await PushKit(http_session, daemon.url, daemon.tokens["pusher"]).push(paths)
