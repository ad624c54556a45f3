"""The bucket is listed in parallel under disjoint prefixes: every key the cache can write lies under exactly one
of them, including hash parts that begin like a directory name (n, na, nar, l, r, b)."""

from __future__ import annotations

import hashlib
import random

from niks3d.gc.orphans import listing_prefixes
from niks3d.nix.bucketkeys import build_trace_key, log_key, ls_key, nar_key, narinfo_key, realisation_key
from niks3d.nix.nix32 import encode


def _keys(hash_part: str, rng: random.Random) -> list[str]:
    digest = hashlib.sha256(rng.randbytes(8)).digest()
    return [
        narinfo_key(hash_part),
        ls_key(hash_part),
        nar_key(digest),
        nar_key(digest, "xz"),
        log_key(f"{hash_part}-x.drv"),
        realisation_key(f"sha256:{digest.hex()}!out"),
        build_trace_key(f"{hash_part}-x.drv", "out"),
    ]


def test_every_cache_key_lies_under_exactly_one_prefix() -> None:
    prefixes = listing_prefixes()
    assert len(set(prefixes)) == len(prefixes)
    rng = random.Random(3)
    hashes = [encode(rng.randbytes(20)) for _ in range(2000)]
    hashes += [start + encode(rng.randbytes(20))[len(start) :] for start in ("n", "na", "nar", "l", "r", "b", "0", "z")]
    for hash_part in hashes:
        for key in _keys(hash_part, rng):
            owners = [p for p in prefixes if key.startswith(p)]
            assert len(owners) == 1, (key, owners)


def test_no_prefix_contains_another() -> None:
    prefixes = listing_prefixes()
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]
