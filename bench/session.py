"""Benchmark: what opening one large upload session costs the daemon (issue 20: one large session must not stall it).

Starts ``niks3d dev`` (its daemon runs in the dev process, PostgreSQL and SeaweedFS in their own), then opens one
session of ``--paths`` synthetic store paths (none cached, so every path gets presigned uploads) while a probe
thread asks for a missing narinfo every few milliseconds on one keep-alive connection. Prints the time to
open the session, the request and answer sizes, the daemon's RSS before, at its peak and after, the longest
a probe waited (how long the event loop was blocked, plus one request), the probes' answers by status (a 503
is a probe the daemon could not serve), and the load average before and after. The answer comes in pages
(docs/api.md): the bench reads them all, as ``niks3 push`` does.

Next to the probe's figures it prints the floor the machine sets under them in the same run: a separate Python
process that only sleeps 5 ms at a time, and how late its wake-ups came while the session was opened. On a
shared machine the operating system's scheduling delays every thread that way, the daemon's event loop too, so
a probe can be no faster than that, whatever the daemon does.

    .venv/bin/python -m bench.session [--paths 100000] [--port 5799]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import http.client
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from niks3d.nix.nix32 import encode


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _body(n: int) -> bytes:
    rng = random.Random(20)
    paths = []
    for i in range(n):
        paths.append(
            {
                "path": f"/nix/store/{encode(rng.randbytes(20))}-bench-{i}",
                "nar_hash": "sha256:" + encode(rng.randbytes(32)),
                "nar_size": 1000 + i,
                "references": [],
                "deriver": None,
                "ca": None,
                "listing": False,
                "log": False,
            }
        )
    return json.dumps({"roots": [paths[-1]["path"]], "paths": paths}).encode()


# A process of its own (no GIL shared with the bench or the daemon) that sleeps 5 ms at a time until its stdin is
# closed, then prints how late each wake-up came, in seconds, as JSON.
_SLEEPER = """
import json, select, sys, time
late = []
while not select.select([sys.stdin], [], [], 0)[0]:
    start = time.perf_counter()
    time.sleep(0.005)
    late.append(time.perf_counter() - start - 0.005)
print(json.dumps(late))
"""


def _quantiles(values: list[float]) -> str:
    """Median, 99th percentile and the longest, in ms."""
    if not values:
        return "none"
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"median {pick(0.5):.1f} ms, 99th percentile {pick(0.99):.0f} ms, longest {ordered[-1] * 1000:.0f} ms"


class Probe(threading.Thread):
    """Asks for a missing narinfo every ``period`` seconds; records the longest answer."""

    def __init__(self, port: int, period: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.period = port, period
        self.longest = 0.0
        self.count = 0
        self.times: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        while not self.stop.is_set():
            start = time.perf_counter()
            conn.request("GET", "/" + "0" * 32 + ".narinfo")
            response = conn.getresponse()
            response.read()
            self.statuses[response.status] += 1
            took = time.perf_counter() - start
            self.longest = max(self.longest, took)
            self.times.append(took)
            self.count += 1
            time.sleep(self.period)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=5799)
    args = parser.parse_args()
    body = _body(args.paths)
    with tempfile.TemporaryDirectory(prefix="niks3d-bench-session-") as tmp:
        workdir = Path(tmp) / "dev"
        log_path = Path(tmp) / "dev.log"
        entry = "from niks3d.cli.main import main; raise SystemExit(main())"
        argv = [sys.executable, "-c", entry, "dev", "--port", str(args.port), "--dir", str(workdir)]
        with log_path.open("wb") as log:
            dev = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            while "niks3d dev is running" not in log_path.read_text():
                if dev.poll() is not None:
                    print(log_path.read_text()[-3000:])
                    return 1
                time.sleep(0.2)
            token = (workdir / "secrets" / "push-token").read_text().strip()
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            before, _ = _rss(dev.pid)
            probe = Probe(args.port)
            probe.start()
            time.sleep(0.5)
            idle_longest, probe.longest, probe.times = probe.longest, 0.0, []
            sleeper = subprocess.Popen(
                [sys.executable, "-c", _SLEEPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=3600)
            start = time.perf_counter()
            conn.request(
                "POST",
                "/api/v1/sessions",
                body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            answer = response.read()
            first_page = time.perf_counter() - start
            pages, total = 1, len(answer)
            following = json.loads(answer).get("next") if response.status < 300 else None
            session_id = json.loads(answer).get("session_id") if response.status < 300 else None
            while following is not None:  # the answer's other pages (docs/api.md)
                conn.request(
                    "GET",
                    f"/api/v1/sessions/{session_id}/paths?start={following}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                page = conn.getresponse()
                data = page.read()
                if page.status != 200:
                    print(f"page at {following}: status {page.status}: {data[:300]!r}")
                    break
                pages, total = pages + 1, total + len(data)
                following = json.loads(data).get("next")
            elapsed = time.perf_counter() - start
            probe.stop.set()
            probe.join()
            late, _ = sleeper.communicate("", timeout=60)
            load_after = Path("/proc/loadavg").read_text().split()[:3]
            time.sleep(2)
            after, peak = _rss(dev.pid)
            print(f"paths: {args.paths}; status {response.status}")
            sizes = f"request {len(body) / 2**20:.1f} MiB, answer {total / 2**20:.1f} MiB in {pages} pages"
            print(f"{sizes}; the open (first page) took {first_page:.1f} s, all pages {elapsed:.1f} s")
            rss = f"{before / 1024:.0f} MiB before, {peak / 1024:.0f} MiB peak, {after / 1024:.0f} MiB after"
            print(f"daemon RSS: {rss}")
            print(
                f"narinfo probe: longest {probe.longest * 1000:.0f} ms during the open "
                f"({probe.count} probes; {idle_longest * 1000:.1f} ms when idle)"
            )
            print(f"narinfo probe during the open: {_quantiles(probe.times)}")
            print(
                "floor: a separate process sleeping 5 ms at a time woke up late by "
                f"{_quantiles(json.loads(late))} meanwhile (the OS's scheduling on this machine)"
            )
            answers = ", ".join(f"{status}: {n}" for status, n in sorted(probe.statuses.items()))
            print(f"probe answers by status: {answers}")
            print(f"load average (1, 5, 15 min): {' '.join(load_before)} before, {' '.join(load_after)} after")
            if response.status >= 300:
                print(answer[:500].decode(errors="replace"))
        finally:
            dev.terminate()
            dev.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
