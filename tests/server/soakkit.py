"""A soak of the daemon (issue 20): concurrent pushes of overlapping closures, narinfo hits and misses and NAR reads
for a while, then every pushed closure checked as Nix reads it through the daemon. Used by bench/soak.py (the
figures) and tests/e2e/test_soak.py (the bounded, slow test)."""

from __future__ import annotations

__all__ = ["Soak"]

import asyncio
import hashlib
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from niks3d.nix.bucketkeys import ls_key, nar_key
from niks3d.nix.hashes import format_sha256
from niks3d.nix.nix32 import encode
from tests.server.pushkit import FakePath, PushKit, make_path


async def _upload_specs(
    kit: PushKit, session_id: str, specs: list[dict[str, Any]], closure: list[FakePath]
) -> dict[str, Any]:
    """Upload the objects of fresh upload specs (a 422 objects_missing); returns their reports."""
    bodies = {nar_key(p.nar_hash, "zstd"): p.compressed for p in closure} | {ls_key(p.hash): p.listing for p in closure}
    reports: dict[str, Any] = {}
    for spec in specs:
        body = bodies[spec["key"]]
        if spec["action"] == "put":
            await kit.put(spec, body)
        elif spec["action"] == "multipart":
            await kit.multipart(session_id, spec, body)
        else:
            continue
        reports[spec["key"]] = {"file_size": len(body)}
        if spec["kind"] == "nar":
            reports[spec["key"]]["file_hash"] = format_sha256(hashlib.sha256(body).digest())
    return reports


def _stale_connection(exc: aiohttp.ClientError) -> bool:
    """Whether a request failed on a kept-alive connection the daemon had just closed as idle
    (``server.idle_timeout``), before the daemon read it: what niks3 push and Nix send again on a new connection.
    Under load the client's own keep-alive limit does not always let such a connection go first."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and "Can not write request body" in str(exc)


class Soak:
    def __init__(self, url: str, token: str, tmp: Path, seed: int) -> None:
        self.url, self.token, self.tmp = url, token, tmp
        self.rng = random.Random(seed)
        self.statuses: Counter[str] = Counter()
        self.longest_read = 0.0  # seconds, one request
        self.longest_push = 0.0  # seconds, open to published
        self.published: dict[str, FakePath] = {}
        self.closures: list[list[FakePath]] = []
        self.library: list[FakePath] = []
        self.stop = False
        # The longest a pusher honours a Retry-After (a fault test lowers it, so that it ends soon after SIGCONT).
        self.retry_cap = float("inf")

    def record(self, what: str, status: int, started: float) -> None:
        self.statuses[f"{what} {status}"] += 1
        took = time.perf_counter() - started
        if what.startswith("push"):
            self.longest_push = max(self.longest_push, took)
        else:
            self.longest_read = max(self.longest_read, took)

    def failures(self) -> int:
        """5xx answers, and pushes that failed or gave up."""
        bad = 0
        for what, n in self.statuses.items():
            kind, status = what.rsplit(" ", 1)
            if status.startswith("5") or kind in ("push-failed", "push-gave-up"):
                bad += n
        return bad

    def build_library(self, n: int) -> None:
        for i in range(n):
            refs = [p.path for p in self.rng.sample(self.library, k=min(len(self.library), self.rng.randint(0, 2)))]
            self.library.append(
                make_path(self.tmp, self.rng, f"lib{i}", size=self.rng.randint(500, 60_000), references=refs)
            )

    def closure_of(self, top: FakePath) -> list[FakePath]:
        by_path = {p.path: p for p in self.library}
        by_path[top.path] = top
        seen: dict[str, FakePath] = {}
        todo = [top]
        while todo:
            p = todo.pop()
            if p.path not in seen:
                seen[p.path] = p
                todo.extend(by_path[r] for r in p.references)
        return list(seen.values())

    async def pusher(self, http: aiohttp.ClientSession, n: int) -> None:
        kit = PushKit(http, self.url, self.token)
        rng = random.Random(n)
        i = 0
        while not self.stop:
            refs = [p.path for p in rng.sample(self.library, k=3)]
            top = make_path(self.tmp, rng, f"app{n}-{i}", size=rng.randint(1000, 200_000), references=refs)
            closure = self.closure_of(top)
            started = time.perf_counter()
            try:
                session = await kit.open(closure, [top], expect=(200, 201, 503))
                if "session_id" not in session:
                    self.record("push-open", 503, started)
                    continue
                reports = await kit.upload(session, closure)
                for _ in range(200):
                    answer = await kit.complete(session["session_id"], reports, expect=(200, 409, 422, 503))
                    if "published" in answer:
                        break
                    if answer.get("error") == "objects_missing":  # this session took an upload over
                        reports.update(await _upload_specs(kit, session["session_id"], answer["objects"], closure))
                    retry = answer.get("retry_after")
                    wait = retry if isinstance(retry, int) and answer.get("error") != "objects_missing" else 0
                    await asyncio.sleep(min(wait, self.retry_cap))
                else:
                    self.record("push-gave-up", 0, started)
                    continue
                self.record("push", 200, started)
                for p in closure:
                    self.published[p.hash] = p
                self.closures.append(closure)
            except AssertionError as exc:
                status = int(str(exc).split(": ", 1)[1].split()[0]) if ": " in str(exc) else -1
                self.record("push-failed", status, started)
            except aiohttp.ClientError as exc:
                if not _stale_connection(exc):
                    raise
                self.record("push-reconnect", 0, started)
            i += 1

    async def reader(self, http: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(1000 + n)
        while not self.stop:
            started = time.perf_counter()
            try:
                await self._read_once(http, rng)
            except aiohttp.ClientError as exc:
                if not _stale_connection(exc):
                    raise
                self.record("read-reconnect", 0, started)

    async def _read_once(self, http: aiohttp.ClientSession, rng: random.Random) -> None:
        """One read as Nix makes it: a known narinfo and its NAR, or a miss."""
        if self.published and rng.random() < 0.5:
            p = self.published[rng.choice(list(self.published))]
            started = time.perf_counter()
            async with http.get(f"{self.url}/{p.hash}.narinfo") as r:
                text = await r.text()
                self.record("narinfo-hit", r.status, started)
            if r.status == 200:
                url = next(line[5:] for line in text.splitlines() if line.startswith("URL: "))
                started = time.perf_counter()
                async with http.get(f"{self.url}/{url}") as r:
                    await r.read()
                    self.record("nar", r.status, started)
        else:
            started = time.perf_counter()
            async with http.get(f"{self.url}/{encode(rng.randbytes(20))}.narinfo") as r:
                await r.read()
                self.record("narinfo-miss", r.status, started)

    async def check(self, http: aiohttp.ClientSession) -> list[str]:
        """Every pushed closure as Nix reads it through the daemon; returns the problems."""
        problems = []
        for p in self.published.values():
            async with http.get(f"{self.url}/{p.hash}.narinfo") as r:
                if r.status != 200:
                    problems.append(f"{p.path}: narinfo {r.status}")
                    continue
                fields = dict(line.split(": ", 1) for line in (await r.text()).splitlines() if ": " in line)
            async with http.get(f"{self.url}/{fields['URL']}") as r:
                body = await r.read()
            if r.status != 200 or body != p.compressed or len(body) != int(fields["FileSize"]):
                problems.append(f"{p.path}: NAR {r.status}, {len(body)} bytes")
            for ref in p.references:
                async with http.get(f"{self.url}/{ref.split('/')[3][:32]}.narinfo") as r:
                    await r.read()
                    if r.status != 200:
                        problems.append(f"{p.path}: reference {ref} narinfo {r.status}")
        return problems
