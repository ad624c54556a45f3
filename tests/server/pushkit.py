"""A minimal, explicit push client for server tests: synthetic store paths with real NARs, raw HTTP calls.

It is not `niks3 push` (that has its own tests); it lets a test drive each step of the protocol by hand,
repeat steps, skip them, or upload the wrong bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import zstandard

from niks3d.nix.derivation import text_store_path
from niks3d.nix.hashes import format_sha256
from niks3d.nix.listing import render_listing
from niks3d.nix.nar_dump import dump_path
from niks3d.nix.nix32 import encode

ZSTD = zstandard.ZstdCompressor(level=3)


def random_hash(rng: random.Random) -> str:
    return encode(rng.randbytes(20))


@dataclass
class FakePath:
    """A store path that exists only as a directory in a temp dir, with its real NAR."""

    path: str
    nar: bytes
    nar_hash: bytes
    listing: bytes
    references: list[str] = field(default_factory=list)
    deriver: str | None = None
    log: bytes | None = None
    derivation: bytes | None = None  # the deriver's .drv file: the proof a log needs (docs/security.md)

    @property
    def hash(self) -> str:
        return self.path.split("/")[3][:32]

    @property
    def compressed(self) -> bytes:
        return ZSTD.compress(self.nar)

    def meta(self) -> dict[str, Any]:
        proof = {"derivation": base64.b64encode(self.derivation).decode()} if self.log and self.derivation else {}
        return {
            **proof,
            "path": self.path,
            "nar_hash": format_sha256(self.nar_hash),
            "nar_size": len(self.nar),
            "references": self.references,
            "deriver": self.deriver,
            "ca": None,
            "listing": True,
            "log": self.log is not None,
        }


def make_path(
    tmp: Path,
    rng: random.Random,
    name: str,
    *,
    size: int = 1000,
    references: list[str] | None = None,
    log: bool = False,
    incompressible: bool = False,
) -> FakePath:
    root = tmp / f"{name}-{rng.randrange(1 << 30)}"
    (root / "bin").mkdir(parents=True)
    data = rng.randbytes(size) if incompressible else (name.encode() * (size // max(1, len(name)) + 1))[:size]
    (root / "bin" / name).write_bytes(data)
    (root / "bin" / name).chmod(0o755)
    (root / "README").write_text(f"{name}\n" + "\n".join(references or []))
    (root / "link").symlink_to("bin/" + name)
    chunks: list[bytes] = []
    result = dump_path(root, chunks.append)
    store_path = f"/nix/store/{random_hash(rng)}-{name}"
    derivation = derivation_of(store_path)
    deriver = text_store_path(f"{name}.drv", derivation, []).path
    return FakePath(
        path=store_path,
        nar=b"".join(chunks),
        nar_hash=result.nar_hash,
        listing=render_listing(result.listing) if result.listing is not None else b"{}",
        references=sorted(references or []),
        deriver=deriver,
        log=f"building {name}\n".encode() * 10 if log else None,
        derivation=derivation,
    )


def derivation_of(out: str) -> bytes:
    """A .drv file (no inputs) whose one output is ``out``."""
    return f'Derive([("out","{out}","","")],[],[],"x86_64-linux","/bin/sh",[],[("out","{out}")])'.encode()


def make_closure(tmp: Path, seed: int, n: int = 4, **kwargs: Any) -> list[FakePath]:
    """A chain-with-fanout closure: path i refers to paths i-1 and i-2 (and itself for the last one)."""
    rng = random.Random(seed)
    paths: list[FakePath] = []
    for i in range(n):
        refs = [p.path for p in paths[-2:]]
        paths.append(make_path(tmp, rng, f"p{i}", references=refs, **kwargs))
    last = paths[-1]
    last.references = sorted([*last.references, last.path])
    return paths


class PushKit:
    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.auth = {"Authorization": f"Bearer {token}"}
        self.uploads: list[str] = []  # keys PUT to S3, in order (to count duplicates)

    async def call(self, method: str, path: str, body: Any = None, *, expect: int | tuple[int, ...] = 200) -> Any:
        async with self.http.request(method, self.url + path, json=body, headers=self.auth) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            expected = (expect,) if isinstance(expect, int) else expect
            assert r.status in expected, f"{method} {path}: {r.status} {data}"
            return data

    async def open(
        self,
        paths: list[FakePath],
        roots: list[FakePath],
        *,
        key: str | None = None,
        expect: int | tuple[int, ...] = (200, 201),
    ) -> Any:
        body: dict[str, Any] = {"roots": [r.path for r in roots], "paths": [p.meta() for p in paths]}
        if key:
            body["idempotency_key"] = key
        return await self.call("POST", "/api/v1/sessions", body, expect=expect)

    async def put(self, spec: dict[str, Any], body: bytes) -> None:
        async with self.http.put(spec["url"], data=io.BytesIO(body), headers=spec["headers"]) as r:
            assert r.status == 200, f"PUT {spec['key']}: {r.status} {await r.text()}"
        self.uploads.append(spec["key"])

    async def upload(
        self, session: dict[str, Any], paths: list[FakePath], *, corrupt: set[str] = frozenset()
    ) -> dict[str, Any]:
        """Upload every object the session asks for; returns the reports for complete."""
        by_path = {p.path: p for p in paths}
        reports: dict[str, Any] = {}
        for entry in session["paths"]:
            for obj in entry.get("objects", []):
                if obj["action"] == "none":
                    continue
                p = by_path[entry["path"]]
                body = {"nar": p.compressed, "ls": p.listing, "log": ZSTD.compress(p.log or b"")}[obj["kind"]]
                if obj["key"] in corrupt:
                    body = body[: len(body) // 2]
                if obj["action"] == "put":
                    await self.put(obj, body)
                else:
                    await self.multipart(session["session_id"], obj, body)
                report: dict[str, Any] = {"file_size": len(body) if obj["key"] not in corrupt else len(body) * 2}
                if obj["kind"] == "nar":
                    report["file_hash"] = format_sha256(hashlib.sha256(body).digest())
                reports[obj["key"]] = report
        return reports

    async def multipart(self, session_id: str, spec: dict[str, Any], body: bytes) -> None:
        size = spec["part_size"]
        count = max(1, -(-len(body) // size))
        urls = {p["part_number"]: p for p in spec["parts"]}
        more = [n for n in range(1, count + 1) if n not in urls]
        if more:
            extra = await self.call(
                "POST",
                f"/api/v1/sessions/{session_id}/urls",
                {"objects": [{"key": spec["key"], "parts": more}]},
            )
            urls.update({p["part_number"]: p for p in extra["objects"][0]["parts"]})
        for n in range(1, count + 1):
            part = urls[n]
            async with self.http.put(
                part["url"], data=io.BytesIO(body[(n - 1) * size : n * size]), headers=part["headers"]
            ) as r:
                assert r.status == 200, f"part {n}: {r.status} {await r.text()}"
        self.uploads.append(spec["key"])

    async def complete(
        self, session_id: str, reports: dict[str, Any] | None = None, expect: int | tuple[int, ...] = 200
    ) -> Any:
        return await self.call(
            "POST", f"/api/v1/sessions/{session_id}/complete", {"objects": reports or {}}, expect=expect
        )

    async def push(self, paths: list[FakePath], roots: list[FakePath] | None = None) -> Any:
        session = await self.open(paths, roots or paths[-1:])
        reports = await self.upload(session, paths)
        return await self.complete(session["session_id"], reports)
