"""Pins through the API: create, move, list, delete; only published paths; the pin scope is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.server.pushkit import PushKit, make_closure


async def test_pins_lifecycle(daemon: Any, tmp_path: Path) -> None:
    paths = make_closure(tmp_path, seed=20, n=2)
    async with aiohttp.ClientSession() as http:
        pusher = PushKit(http, daemon.url, daemon.tokens["pusher"])
        pinner = PushKit(http, daemon.url, daemon.tokens["pinner"])
        body = await pinner.call("PUT", "/api/v1/pins/release", {"path": paths[0].path}, expect=404)
        assert body["error"] == "path_not_found"
        await pusher.push(paths)
        pin = await pinner.call("PUT", "/api/v1/pins/release", {"path": paths[0].path})
        assert pin["name"] == "release" and pin["path"] == paths[0].path and pin["created_by"] == "pinner"
        moved = await pinner.call("PUT", "/api/v1/pins/release", {"path": paths[1].path})
        assert moved["path"] == paths[1].path
        listed = await pinner.call("GET", "/api/v1/pins")
        assert [p["name"] for p in listed["pins"]] == ["release"]
        assert (await pinner.call("GET", "/api/v1/pins/release"))["path"] == paths[1].path
        wrong_name = paths[1].path[:-2] + "zz"
        body = await pinner.call("PUT", "/api/v1/pins/other", {"path": wrong_name}, expect=404)
        assert body["error"] == "path_not_found"
        body = await pinner.call("PUT", "/api/v1/pins/bad name", {"path": paths[0].path}, expect=400)
        assert "pin name" in body["message"]
        body = await pusher.call("DELETE", "/api/v1/pins/release", expect=403)
        await pinner.call("DELETE", "/api/v1/pins/release", expect=204)
        body = await pinner.call("DELETE", "/api/v1/pins/release", expect=404)
        assert body["error"] == "pin_not_found"
        assert (await pinner.call("GET", "/api/v1/pins"))["pins"] == []
