"""What the garbage-collection, fault and soak scenarios check, read straight from the bucket (as Nix sees it) and
the database.

``bucket_state`` lists the bucket and parses every narinfo; ``closure_problems`` (and ``assert_closure_consistent``)
is design invariant 1 (every narinfo's NAR, with the size the narinfo says, and the narinfos of all its references
are there); ``cache_problems`` is the end check of a run against a daemon's configuration: that and
``niks3d fsck``'s check of the database against the bucket (docs/operations.md: nothing published is missing or of
another size, nothing untracked);
``assert_substitutable`` checks a closure the way Nix would fetch it: narinfos signed by the cache's key, NAR
bytes with the FileHash and FileSize they promise. ``nix_copy`` runs the real Nix 2.8 against the bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niks3d.cli.oneshot import open_stores
from niks3d.config import load_config
from niks3d.fsck import FsckParams, run_fsck
from niks3d.nix.narinfo import NarInfo, parse_narinfo
from niks3d.nix.signing import PublicKey
from tests.fixtures.s3 import S3Bucket
from tests.server.bucketview import s3_client

NIX = ["nix", "--extra-experimental-features", "nix-command"]


@dataclass
class BucketState:
    sizes: dict[str, int]  # key -> size
    narinfos: dict[str, NarInfo]  # hash part -> parsed narinfo


def bucket_state(s3: Any) -> BucketState:
    client = s3_client(s3)
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        sizes.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    narinfos = {}
    for key in sizes:
        if key.endswith(".narinfo"):
            try:
                body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                raise AssertionError(f"{key} was listed but is gone: the bucket changed during a quiet check") from None
            narinfos[key[:32]] = parse_narinfo(body, expected_hash=key[:32])
    return BucketState(sizes, narinfos)


def closure_problems(state: BucketState) -> list[str]:
    """Design invariant 1, read from the bucket: what breaks it, one line each."""
    problems = []
    for hash_part, info in sorted(state.narinfos.items()):
        if info.url not in state.sizes:
            problems.append(f"{hash_part}.narinfo names {info.url}, which is not in the bucket")
        elif state.sizes[info.url] != info.file_size:
            problems.append(f"{info.url} has {state.sizes[info.url]} bytes, {hash_part}.narinfo says {info.file_size}")
        problems.extend(
            f"{hash_part}.narinfo references {ref}, whose narinfo is gone"
            for ref in info.references
            if ref[:32] not in state.narinfos
        )
    return problems


def assert_closure_consistent(state: BucketState) -> None:
    problems = closure_problems(state)
    assert not problems, problems[:10]


async def cache_problems(config_path: Path) -> list[str]:
    """The end check of a run against the daemon configured by ``config_path``, once nothing writes: ``niks3d
    fsck`` (in this process) and :func:`closure_problems` of one listing of the bucket. Returns the problems."""
    config = load_config(config_path)
    async with open_stores(config) as (pool, bucket):
        report = await run_fsck(pool, bucket, FsckParams())
    problems = [f"fsck {p.kind} {p.key}: {p.detail}" for p in sorted(report.problems)]
    s3, secrets = config.settings.s3, config.secrets
    assert s3.endpoint_url is not None and secrets.s3_access_key_id and secrets.s3_secret_access_key
    view = S3Bucket(s3.endpoint_url, s3.bucket, secrets.s3_access_key_id, secrets.s3_secret_access_key, s3.region)
    return problems + closure_problems(await asyncio.to_thread(bucket_state, view))


def assert_substitutable(s3: Any, state: BucketState, root_hash: str, key: PublicKey) -> int:
    """Walk the closure of ``root_hash`` as Nix would; returns how many paths it has."""
    client = s3_client(s3)
    seen: set[str] = set()
    todo = [root_hash]
    while todo:
        hash_part = todo.pop()
        if hash_part in seen:
            continue
        seen.add(hash_part)
        info = state.narinfos.get(hash_part)
        assert info is not None, f"the closure of {root_hash} lost {hash_part}.narinfo"
        assert any(key.verify(sig, info.fingerprint()) for sig in info.sigs), f"{hash_part}.narinfo is not signed"
        nar = client.get_object(Bucket=s3.bucket, Key=info.url)["Body"].read()
        assert len(nar) == info.file_size and hashlib.sha256(nar).digest() == info.file_hash, info.url
        todo.extend(ref[:32] for ref in info.references)
    return len(seen)


def nix_copy(s3: Any, tmp_path: Path, paths: list[str], public_keys: list[str]) -> subprocess.CompletedProcess[str]:
    """``nix copy`` from the bucket (a plain HTTP binary cache) into a fresh chroot store, signatures checked."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [
        *NIX,
        "copy",
        "--from",
        f"{s3.endpoint_url}/{s3.bucket}",
        "--to",
        str(tmp_path / f"client-{time.monotonic_ns()}"),
        "--option",
        "substituters",
        "",
        "--option",
        "trusted-public-keys",
        " ".join(public_keys),
        *paths,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)
