"""What the hostile-writer tests share: a real store path's metadata and NAR as an attacker can read them, the
victim's `niks3 push`, and `nix copy --from` of the bucket with signatures checked (docs/security.md)."""

from __future__ import annotations

import hashlib
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import zstandard

from niks3d.nix.hashes import format_sha256, parse_sha256
from niks3d.nix.nix32 import encode
from tests.e2e.test_push import _closure, _push, _substitute
from tests.server.pushkit import FakePath

ZSTD = zstandard.ZstdCompressor(level=3)
# The attacker's token: another push token, or the victim's own (the rules hold for one identity too).
ATTACKERS = ["intruder", "pusher"]


@dataclass(frozen=True)
class RealPath:
    path: str
    nar: bytes
    nar_hash: bytes
    references: list[str]
    deriver: str | None


def real_path(path: str) -> RealPath:
    """What anyone who can read a store (or a cache) knows about ``path``: its NAR, NarHash and references."""
    nar = subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout
    query = subprocess.run(["nix-store", "--query", "--hash", path], check=True, capture_output=True, text=True)
    refs = subprocess.run(["nix-store", "--query", "--references", path], check=True, capture_output=True, text=True)
    drv = subprocess.run(["nix-store", "--query", "--deriver", path], check=True, capture_output=True, text=True)
    nar_hash = parse_sha256(query.stdout.strip())
    assert hashlib.sha256(nar).digest() == nar_hash
    deriver = drv.stdout.strip()
    return RealPath(path, nar, nar_hash, sorted(refs.stdout.split()), deriver if deriver.endswith(".drv") else None)


def made_up(name: str, *, nar: bytes, nar_hash: bytes | None = None, deriver: str | None = None) -> FakePath:
    """A store path that exists nowhere, with whatever NAR and NarHash the attacker likes to claim."""
    digest = hashlib.sha256(name.encode() + nar[:64]).digest()
    return FakePath(
        path=f"/nix/store/{encode(digest[:20])}-{name}",
        nar=nar,
        nar_hash=nar_hash if nar_hash is not None else hashlib.sha256(nar).digest(),
        listing=b'{"version":1,"root":{"type":"regular","size":1}}',
        deriver=deriver,
    )


def put_log(daemon: Any, token: str, drv: str, text: bytes) -> tuple[int, str]:
    """``PUT log/<drv>`` (a store path or its basename), as ``nix store copy-log --to`` sends it: status, body."""
    request = urllib.request.Request(
        f"{daemon.url}/log/{drv.removeprefix('/nix/store/')}",
        data=text,
        method="PUT",
        headers={"Authorization": f"Bearer {daemon.tokens[token]}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def junk_of_size(size: int) -> bytes:
    return (b"junk, not a NAR at all " * (size // 23 + 1))[:size]


def file_report(body: bytes, *, nar: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"file_size": len(body)}
    if nar:
        report["file_hash"] = format_sha256(hashlib.sha256(body).digest())
    return report


def victim_pushes(daemon: Any, tmp_path: Any, capsys: Any, *paths: str) -> dict[str, Any]:
    """The honest `niks3 push` of ``paths`` with the victim's token; it must succeed."""
    code, doc, err = _push(daemon, tmp_path, capsys, *paths, token="pusher")
    assert code == 0, err
    return doc


def assert_substitutable(daemon: Any, tmp_path: Any, *paths: str) -> None:
    """Stock Nix copies the whole closure of ``paths`` from the bucket, signatures checked."""
    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    copied = _substitute(daemon, tmp_path, sorted(_closure(*paths)), keys)
    assert copied.returncode == 0, copied.stderr
