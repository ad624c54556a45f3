"""A large upload session opens without stalling the daemon, and its answer comes in pages (issue 20, item 2).

The daemon runs as a subprocess with real PostgreSQL and SeaweedFS. 3,000 paths by default (NIKS3_LARGE_SESSION
for more); bench/session.py measures 100,000.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import aiohttp

from niks3d.client.api import ApiClient
from niks3d.client.config import ClientConfig, Token
from niks3d.nix.nix32 import encode
from niks3d.uploads.open import PAGE_PATHS

N_PATHS = int(os.environ.get("NIKS3_LARGE_SESSION", "3000"))


def _body(n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    paths = [
        {
            "path": f"/nix/store/{encode(rng.randbytes(20))}-large-{i}",
            "nar_hash": "sha256:" + encode(rng.randbytes(32)),
            "nar_size": 1000 + i,
            "references": [],
            "listing": i % 2 == 0,
        }
        for i in range(n)
    ]
    return {"roots": [paths[-1]["path"]], "paths": paths}


async def test_a_large_session_opens_while_other_requests_are_answered_and_is_read_in_pages(start_daemon) -> None:
    daemon = start_daemon()
    body = {**_body(N_PATHS, seed=20), "idempotency_key": "large-1"}
    raw = json.dumps(body).encode()
    push = {**daemon.headers("pusher"), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        opened = asyncio.Event()
        probing = asyncio.Event()
        during: list[int] = []

        async def probe() -> None:
            # Probes on their own connection: each is answered by the daemon's event loop, so answers that
            # arrive while the open is in flight show that the open does not hold the loop.
            async with aiohttp.ClientSession() as other:
                while not opened.is_set():
                    async with other.get(f"{daemon.url}/{'0' * 32}.narinfo") as r:
                        during.append(r.status)
                    async with other.get(f"{daemon.url}/health") as r:
                        during.append(r.status)
                    probing.set()

        async def open_session() -> tuple[int, dict[str, Any]]:
            # The probes are under way before the body goes out, and keep going until the answer is in.
            await probing.wait()
            async with http.post(f"{daemon.url}/api/v1/sessions", data=raw, headers=push) as r:
                answer = await r.json()
            opened.set()
            return r.status, answer

        started = len(during)
        prober = asyncio.create_task(probe())
        status, first = await open_session()
        await prober
        assert status == 201, first
        answered_during = len(during) - started - 2
        assert answered_during >= 10, f"only {answered_during} probes were answered while the session opened"
        assert set(during) == {200, 404}

        # Pages: the first comes with the session, the rest from GET .../paths, each at most PAGE_PATHS long.
        session_id = first["session_id"]
        pages = [first]
        while "next" in pages[-1]:
            url = f"{daemon.url}/api/v1/sessions/{session_id}/paths?start={pages[-1]['next']}"
            async with http.get(url, headers=daemon.headers("pusher")) as r:
                assert r.status == 200, await r.text()
                pages.append(await r.json())
        assert len(pages) == -(-N_PATHS // PAGE_PATHS)
        assert all(len(p["paths"]) <= PAGE_PATHS for p in pages)
        entries = [e for p in pages for e in p["paths"]]
        assert sorted(e["path"] for e in entries) == sorted(p["path"] for p in body["paths"])
        assert all(e["status"] == "upload" for e in entries)
        kinds = [o["kind"] for e in entries for o in e["objects"]]
        assert kinds.count("nar") == N_PATHS and "ls" not in kinds  # niks3d writes listings (rule 8)
        assert all(o["action"] == "put" for e in entries for o in e["objects"])

        # The client reads every page: an idempotent repeat of the push finds the same session, all of it.
        config = ClientConfig(server_url=daemon.url, token=Token(daemon.tokens["pusher"], "test"))
        repeat, created = await ApiClient(http, config).create_session(body)
        assert not created and repeat.session_id == session_id and repeat.next is None
        assert [p.path for p in repeat.paths] == [e["path"] for e in entries]

        # A page asks for a path of the session, of one's own session.
        for start in ("-1", str(N_PATHS), "x", "\uff11", "9" * 12):
            async with http.get(
                f"{daemon.url}/api/v1/sessions/{session_id}/paths",
                params={"start": start},
                headers=daemon.headers("pusher"),
            ) as r:
                assert r.status == 400, (start, r.status)
                assert "start" in (await r.json())["message"]
        page_url = f"{daemon.url}/api/v1/sessions/{session_id}/paths?start=0"
        async with http.get(page_url, headers=daemon.headers("intruder")) as r:
            assert r.status == 403
        async with http.get(page_url) as r:
            assert r.status == 401
        async with http.get(f"{daemon.url}/api/v1/sessions/{session_id}", headers=daemon.headers("pusher")) as r:
            assert (await r.json())["paths"] == N_PATHS
        async with http.delete(f"{daemon.url}/api/v1/sessions/{session_id}", headers=daemon.headers("pusher")) as r:
            assert r.status == 200
        async with http.get(page_url, headers=daemon.headers("pusher")) as r:
            assert r.status == 409 and (await r.json())["error"] == "session_closed"
