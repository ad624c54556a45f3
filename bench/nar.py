"""Benchmark: NarDumper + SHA-256 throughput against ``nix-store --dump PATH | sha256sum``.

Builds (or takes with ``--path``) a large store path: by default about 1 GiB made of four big random files
plus a few thousand small ones, so both the streaming and the per-file costs show. Each side runs once to
warm the page cache, then ``--repeat`` times; the best run counts. Both must agree on the hash.

    .venv/bin/python -m bench.nar [--path /nix/store/...] [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from niks3d.nix.nar_dump import NarDumper
from testkit.nixfixtures import build_expr

SMALL_BYTES = 16 << 10  # the small files
TINY_BYTES = 512  # and a deeper tree of tiny ones


def bench_expr(size_mib: int) -> str:
    total = size_mib << 20
    small_total = total // 16
    tiny_count = 2048
    big_each = (total - small_total - tiny_count * TINY_BYTES) // 4
    script = (
        "export PATH=/bin:/usr/bin; set -e; mkdir -p $out/big $out/small $out/tiny/a/b; "
        f"for i in 1 2 3 4; do head -c {big_each} /dev/urandom > $out/big/file-$i; done; "
        f"head -c {small_total} /dev/urandom | split -b {SMALL_BYTES} -a 4 - $out/small/f; "
        f"head -c {tiny_count * TINY_BYTES} /dev/urandom | split -b {TINY_BYTES} -a 3 - $out/tiny/a/b/t; "
        "chmod +x $out/big/file-1"
    )
    return (
        f'derivation {{ name = "nar-bench-{size_mib}mib"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "{script}" ]; }}\n'
    )


def ours(path: str, chunk_size: int) -> tuple[str, int]:
    dumper = NarDumper(path, chunk_size=chunk_size, listing=False)
    for _ in dumper:
        pass
    return dumper.result.nar_hash.hex(), dumper.result.nar_size


def nix(path: str) -> tuple[str, int]:
    with subprocess.Popen(["nix-store", "--dump", path], stdout=subprocess.PIPE) as dump:
        out = subprocess.run(["sha256sum"], stdin=dump.stdout, capture_output=True, text=True, check=True)
        assert dump.stdout is not None
        dump.stdout.close()
    if dump.returncode != 0:
        raise SystemExit(f"nix-store --dump {path} failed with status {dump.returncode}")
    return out.stdout.split()[0], 0


def nix_dump_only(path: str) -> tuple[str, int]:
    subprocess.run(["nix-store", "--dump", path], stdout=subprocess.DEVNULL, check=True)
    return "", 0


def best_of(repeat: int, run: Callable[[], tuple[str, int]]) -> tuple[float, str, int]:
    digest, size = run()  # warm-up: page cache, imports
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        digest, size = run()
        best = min(best, time.perf_counter() - start)
    return best, digest, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="store path to dump (default: build one)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the built path (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=1 << 20)
    args = parser.parse_args(argv)

    path = args.path
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            (path,) = build_expr(bench_expr(args.size_mib), Path(tmp))
            print(f"built {path} in {time.perf_counter() - start:.1f} s")

    our_time, our_hash, nar_size = best_of(args.repeat, lambda: ours(path, args.chunk_size))
    nix_time, nix_hash, _ = best_of(args.repeat, lambda: nix(path))
    dump_time, _, _ = best_of(args.repeat, lambda: nix_dump_only(path))
    if our_hash != nix_hash:
        print(f"HASH MISMATCH: ours {our_hash}, nix {nix_hash}", file=sys.stderr)
        return 1
    files = sum(1 for p in Path(path).rglob("*") if p.is_file())
    mb = nar_size / 1e6
    print(f"path {path}: NAR {nar_size} bytes, {files} files, sha256 {our_hash}")
    print(f"niks3d NarDumper+sha256 : {mb / our_time:8.1f} MB/s  (best of {args.repeat}: {our_time:.3f} s)")
    print(f"nix-store --dump|sha256sum: {mb / nix_time:8.1f} MB/s  (best of {args.repeat}: {nix_time:.3f} s)")
    print(f"ratio niks3d/nix: {nix_time / our_time:.2f}x")
    print(f"(nix-store --dump >/dev/null alone: {mb / dump_time:.1f} MB/s)")
    print(f"(hashlib sha256 alone on 64 MiB: {64 * 1.048576 / _sha_only():.1f} MB/s)")
    return 0


def _sha_only() -> float:
    block = bytes(1 << 20)
    sha = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(64):
        sha.update(block)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
