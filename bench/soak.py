"""Soak (issue 20): narinfo hits and misses, NAR reads and concurrent pushes against ``niks3d dev`` for a while.

Starts ``niks3d dev`` (the daemon runs in the dev process, PostgreSQL and SeaweedFS in their own) and runs, for
``--seconds``: ``--pushers`` push loops (each pushes a new top path on a random part of a shared library, so
pushes overlap and wait on each other's uploads), and ``--readers`` read loops (a published narinfo, a missing
one, the NAR of a published path). Prints the answers by status, the daemon's RSS sampled from /proc every few
seconds (first, largest, last), and the longest answer; at the end it checks every pushed closure through the
daemon as Nix would read it (every narinfo, its NAR byte-exact with the FileHash it names, and every
reference's narinfo), and the bucket against the database: ``niks3d fsck``'s check (every published path's
narinfo, NAR and files there with their sizes, nothing untracked) and one listing of the bucket (every narinfo's
NAR there with its FileSize, every reference's narinfo there).

    .venv/bin/python bench/soak.py [--seconds 180] [--pushers 20] [--readers 4] [--port 5798]

The soak itself is tests/server/soakkit.py (tests/e2e/test_soak.py runs it, bounded); its push client is the
explicit one of the server tests (tests/server/pushkit.py): real NARs, raw API calls.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.gcchecks import cache_problems
from tests.server.soakkit import Soak


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _run(args: argparse.Namespace, url: str, token: str, tmp: Path, pid: int, config: Path) -> int:
    soak = Soak(url, token, tmp, seed=20)
    soak.build_library(40)
    samples: list[tuple[float, int]] = []
    connector = aiohttp.TCPConnector(limit=args.pushers + args.readers + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        tasks = [asyncio.create_task(soak.pusher(http, n)) for n in range(args.pushers)]
        tasks += [asyncio.create_task(soak.reader(http, n)) for n in range(args.readers)]
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            samples.append((time.monotonic() - start, _rss_kib(pid)))
            await asyncio.sleep(5)
        soak.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        samples.append((time.monotonic() - start, _rss_kib(pid)))
        problems = await soak.check(http)
    in_bucket = await cache_problems(config)
    fivexx = sum(n for what, n in soak.statuses.items() if what.split()[-1].startswith("5"))
    failures = soak.failures()
    print(f"ran {samples[-1][0]:.0f} s with {args.pushers} pushers and {args.readers} readers")
    for what, n in sorted(soak.statuses.items()):
        print(f"  {what}: {n}")
    print(f"5xx answers: {fivexx}; failed pushes and 5xx: {failures}")
    print(f"longest read {soak.longest_read:.2f} s; longest push (open to published) {soak.longest_push:.2f} s")
    rss = [kib for _, kib in samples]
    third = max(1, len(rss) // 3)
    print(
        f"daemon RSS (MiB): first {rss[0] / 1024:.0f}, max {max(rss) / 1024:.0f}, last {rss[-1] / 1024:.0f}; "
        f"mean of the first third {sum(rss[:third]) / third / 1024:.0f}, of the last third "
        f"{sum(rss[-third:]) / third / 1024:.0f} ({len(rss)} samples)"
    )
    print(f"closure check: {len(soak.published)} paths in {len(soak.closures)} pushes, {len(problems)} problems")
    for problem in problems[:20]:
        print(f"  {problem}")
    print(f"bucket check (fsck and the listing): {len(in_bucket)} problems")
    for problem in in_bucket[:20]:
        print(f"  {problem}")
    return 1 if problems or in_bucket or failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--pushers", type=int, default=20)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--port", type=int, default=5798)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-soak-") as tmp:
        workdir = Path(tmp) / "dev"
        log_path = Path(tmp) / "dev.log"
        entry = "from niks3d.cli.main import main; raise SystemExit(main())"
        argv = [sys.executable, "-c", entry, "dev", "--port", str(args.port), "--dir", str(workdir)]
        with log_path.open("wb") as log:
            dev = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            while "niks3d dev is running" not in log_path.read_text():
                if dev.poll() is not None:
                    print(log_path.read_text()[-3000:])
                    return 1
                time.sleep(0.2)
            token = (workdir / "secrets" / "push-token").read_text().strip()
            paths = Path(tmp) / "paths"
            paths.mkdir()
            config = workdir / "niks3d.toml"
            status = asyncio.run(_run(args, f"http://127.0.0.1:{args.port}", token, paths, dev.pid, config))
            errors = [
                line
                for line in log_path.read_text(errors="replace").splitlines()
                if " ERROR " in line or line.startswith("ERROR")
            ]
            print(f"ERROR lines in the daemon's log: {len(errors)}")
            for line in errors[:5]:
                print(f"  {line[:300]}")
            return status or (1 if errors else 0)
        finally:
            dev.terminate()
            dev.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
