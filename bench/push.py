"""Benchmark: what a push costs, against Nix's own writers, and peak client memory.

The default workload, ``cost`` (bench/pushcost.py), measures issue 18's targets in one run: every writer of one
synthetic closure (``nix copy --to http://<nginx WebDAV>`` with Nix 2.8 and with the modern Nix, ``niks3 push``
with and without verification, ``nix copy --to s3://``), CPU per process, requests and bytes, niks3d's
statements and S3 requests per path, at several closure sizes; it starts its own servers (no ``--dev``):

    .venv/bin/python -m bench.push [--paths 300] [--nar-mib 258] [--scale 300,3000,10000] [--suite sid]
        [--no-modern]

A quick run: ``--paths 60 --nar-mib 32 --scale 300,1000``. ``--paths 0`` runs the scale workload only;
``--workdir DIR`` keeps niks3d's log and nginx's access log; ``NIKS3_BENCH_DATABASE='{"acquire_timeout": 0.3}'``
(JSON) overrides niks3d's ``[database]`` settings (a short acquire timeout stands in for a loaded machine).

The other workloads, each pushed by the real ``niks3`` command in a child process whose peak RSS (its own ``VmHWM``) and
CPU time (from ``os.wait4``, with the ``nix path-info`` it runs) are measured; with ``--dev`` the CPU time of the
server side (daemon, SeaweedFS, PostgreSQL) is measured too, since on one machine they compete for the cores:

* ``closure``: ``--paths`` store paths (a binary tree of references) holding about ``--closure-mib`` of this
  machine's own files from /usr/lib and /usr/share (libraries, data, documentation: realistic, compressible
  bytes), grouped directory by directory like packages. It is pushed with ``niks3 push``, then copied with
  ``nix copy --to 'file://DIR?compression=zstd'`` into a fresh directory (the baseline: Nix's own writer of a
  zstd binary cache, no network); both times, their ratio (target: niks3/nix <= 1.0) and the ratios of CPU
  time are printed. The page cache is warmed first, so neither side pays for the disk.
* ``big``: one store path of ``--big-mib`` random bytes (a multipart upload): streaming and the memory bound
  (peak RSS must stay under 200 MiB).
* ``upstream`` (``--dev`` only): a closure of ``--upstream-paths`` paths and about ``--upstream-mib`` whose
  dependencies (every path but the root) carry a signature by a throwaway key that the dev server has as its
  ``cache.upstream_keys`` (``nix store sign``), as a CI build on top of cache.nixos.org's paths would. It is
  pushed as is (only the root is uploaded, the rest is proven upstream), and a second copy of it (another salt)
  with ``--no-upstream-filter``; the bytes sent and the time the filter saved are printed.

Each is pushed again when everything is cached (the cost of a no-op push). The server is ``--server``/
``NIKS3_SERVER_URL`` with ``--token-file``/``NIKS3_TOKEN_FILE``, or, with ``--dev``, a throwaway ``niks3d dev``
(SeaweedFS and PostgreSQL on this machine) started for the run. Store paths are salted, so every run uploads
fresh data.

    .venv/bin/python -m bench.push --dev [--paths 300] [--closure-mib 700] [--big-mib 1024]
        [--workloads closure,big,upstream] [--upstream-paths 60] [--upstream-mib 150] [--trusted-token]
        [-- PUSH OPTIONS]

The cost of verification (docs/security.md, rule 1): with ``--dev`` every NAR of the first pushes is verified
before it is shared (the dev token is an ordinary one); ``--trusted-token`` marks the dev token trusted, so its
NARs are only size-checked, as every push was before. Run ``--workloads closure,big`` both ways and compare the
first pushes' wall and CPU figures.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from niks3d.devenv.process import free_port
from niks3d.nix.signing import SecretKey
from testkit.nixfixtures import build_expr
from testkit.proctree import process_tree

NIKS3 = [sys.executable, "-c", "from niks3d.client.entry import main; raise SystemExit(main())"]  # the niks3 script
NIKS3D = [sys.executable, "-c", "from niks3d.cli.main import main; raise SystemExit(main())"]
NIX = ["nix", "--extra-experimental-features", "nix-command", "--option", "substituters", ""]
SOURCES = ("/usr/lib", "/usr/share")
MAX_FILE = 128 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9+\-._/@=,:~]+")


@dataclass(frozen=True)
class Server:
    """Where to push, and a probe of the CPU seconds its processes have used (None: not on this machine)."""

    url: str
    token_file: str
    cpu: Callable[[], dict[str, float]] | None = None


# How the processes of `niks3d dev` are named in the figures, by their command name.
_SIDES = {"weed": "SeaweedFS", "postgres": "PostgreSQL"}


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds used by ``root`` and every process below it (live ones, and those already reaped), by side:
    SeaweedFS, PostgreSQL, and niks3d (the daemon, in the ``niks3d dev`` process)."""
    totals: dict[str, float] = {}
    # A process's reaped children are in its own figure; a live child of another kind is counted apart.
    for process in process_tree(root):
        side = _SIDES.get(process.name, "niks3d")
        totals[side] = totals.get(side, 0.0) + process.cpu_seconds
    return totals


@contextlib.contextmanager
def dev_server(workdir: Path, upstream_key: str, *, trusted: bool = False) -> Iterator[Server]:
    """``niks3d dev`` (the daemon, SeaweedFS and PostgreSQL) on a free port, trusting ``upstream_key`` (a public
    key) as its upstream."""
    port = free_port()
    log_path = workdir / "dev.log"
    env = {**os.environ, "NIKS3_CACHE__UPSTREAM_KEYS": json.dumps([upstream_key])}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*NIKS3D, "dev", "--port", str(port), "--dir", str(workdir / "dev"), *(["--trusted-token"] * trusted)],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while "niks3d dev is running" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"niks3d dev did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        token = re.search(r"push token file:\s+(\S+)", log_path.read_text())
        if token is None:
            raise SystemExit("niks3d dev did not print its push token file")
        yield Server(f"http://127.0.0.1:{port}", token[1], lambda: tree_cpu(proc.pid))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class Run:
    """One timed child process: wall seconds, its own peak RSS (MiB), CPU seconds (with its reaped children)."""

    seconds: float
    rss: int
    cpu: float


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (``VmHWM``), in KiB; 0 once it is gone."""
    with contextlib.suppress(OSError), Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def timed(argv: list[str], *, env: dict[str, str] | None = None, stdout: int | None = None) -> Run:
    """Run ``argv`` (stderr to a file, shown if it fails) and measure it. Exits the benchmark if it fails.

    The peak RSS is the child's own, sampled while it runs (``wait4`` would report the largest of it and the
    processes it ran, such as ``nix path-info``).
    """
    with tempfile.TemporaryFile() as stderr:
        start = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
        peak = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _peak_rss(child.pid))
            time.sleep(0.02)
        seconds = time.monotonic() - start
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise SystemExit(f"{shlex.join(argv)} failed:\n{stderr.read()[-3000:].decode(errors='replace')}")
    return Run(seconds, peak // 1024, usage.ru_utime + usage.ru_stime)


def push(
    server: Server, paths: list[str], label: str, nar_bytes: int, extra: list[str]
) -> tuple[Run, float | None, int]:
    """Push ``paths`` in a child process and print time, throughput, peak RSS and CPU; returns the run, the CPU
    seconds the server's processes used meanwhile (None when they are not on this machine) and the bytes sent."""
    argv = [*NIKS3, "push", "--server", server.url, "--token-file", server.token_file, "--no-progress", "--json"]
    server_before = server.cpu() if server.cpu else {}
    with tempfile.TemporaryFile() as out:
        run = timed([*argv, *extra, *paths], stdout=out.fileno())
        out.seek(0)
        sent = json.loads(out.read())["bytes_sent"]
    sides = {k: v - server_before.get(k, 0.0) for k, v in server.cpu().items()} if server.cpu else {}
    server_cpu = sum(sides.values()) if sides else None
    detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sides.items(), key=lambda kv: -kv[1]))
    rate = f"{nar_bytes / run.seconds / 2**20:6.1f} MiB/s" if nar_bytes else " " * 12
    line = f"{label:38} {run.seconds:6.2f} s {rate}  RSS {run.rss:4} MiB  CPU {run.cpu:5.1f} s"
    line += f"  sent {sent / 2**20:.0f} MiB" + (
        f"  (server side: CPU {server_cpu:.1f} s: {detail})" if server_cpu else ""
    )
    print(line, flush=True)
    return run, server_cpu, sent


def nix_copy(root: str, workdir: Path, nar_bytes: int) -> Run:
    """``nix copy`` the closure of ``root`` into a fresh zstd file:// cache; print and return the run."""
    target = workdir / f"nix-copy-{secrets.token_hex(4)}"
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / f"xdg-{target.name}")}
    run = timed([*NIX, "copy", "--to", f"file://{target}?compression=zstd", root], env=env)
    written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    rate = nar_bytes / run.seconds / 2**20
    label = "nix copy --to file://?compression=zstd"
    line = f"{label:38} {run.seconds:6.2f} s {rate:6.1f} MiB/s  RSS {run.rss:4} MiB  CPU {run.cpu:5.1f} s"
    print(f"{line}  wrote {written / 2**20:.0f} MiB", flush=True)
    return run


def nar_size(paths: list[str]) -> int:
    out = subprocess.run(["nix-store", "--query", "--size", *paths], check=True, capture_output=True, text=True)
    return sum(int(n) for n in out.stdout.split())


def _candidates() -> Iterator[tuple[Path, int]]:
    """Regular files under SOURCES, directory by directory in a fixed pseudo-random order (so that a closure
    mixes libraries, data and documentation), with names that are safe to pass through Nix and the shell."""
    directories: list[tuple[str, Path, list[tuple[Path, int]]]] = []
    for source in SOURCES:
        for root, dirs, files in os.walk(source):
            dirs.sort()
            found = []
            for name in sorted(files):
                path = Path(root, name)
                if not _SAFE_NAME.fullmatch(str(path)) or path.is_symlink() or not os.access(path, os.R_OK):
                    continue
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    if path.is_file() and 0 < size <= MAX_FILE:
                        found.append((path, size))
            if found:
                directories.append((hashlib.sha256(root.encode()).hexdigest(), Path(root), found))
    for _, _, found in sorted(directories):
        yield from found


def choose_files(paths: int, total: int) -> list[list[Path]]:
    """``paths`` groups of files adding up to about ``total`` bytes; each group fills an even share of what is
    left, so the sizes vary like packages do (a group holding one big library, many holding small files)."""
    groups: list[list[Path]] = [[]]
    left = total
    group_bytes, share = 0, total // paths
    for path, size in _candidates():
        if size > max(left, 1 << 20):
            continue
        groups[-1].append(path)
        group_bytes += size
        left -= size
        if group_bytes >= share:
            if len(groups) == paths:
                break
            groups.append([])
            group_bytes, share = 0, max(left, 0) // (paths - len(groups) + 1)
    if len(groups) < paths or not groups[-1]:
        raise SystemExit(f"found files for only {len(groups)} of {paths} paths under {', '.join(SOURCES)}")
    return groups


def closure_expr(groups: list[list[Path]], salt: str) -> str:
    """A Nix expression of one derivation per group: it copies its files (keeping their directories) and refers
    to its two children in a binary tree, so that path 0 is the root of the closure."""
    lines = [f'let salt = "{salt}";']
    for i in range(len(groups) - 1, -1, -1):
        children = "".join(f"echo ${{p{c}}} >> $out/refs; " for c in (2 * i + 1, 2 * i + 2) if c < len(groups))
        script = (
            "export PATH=/bin:/usr/bin; set -e; mkdir $out; echo $salt > $out/salt; "
            f'{children}while read -r f; do cp --parents "$f" $out/; done < $filesPath'
        )
        files = "\\n".join(str(p) for p in groups[i])
        lines.append(
            f'  p{i} = derivation {{ name = "push-bench-{i}"; inherit salt; system = builtins.currentSystem; '
            f'builder = "/bin/sh"; passAsFile = [ "files" ]; files = "{files}\\n"; '
            f"args = [ \"-c\" ''{script}'' ]; }};"
        )
    lines.append("in [ " + " ".join(f"p{i}" for i in range(len(groups))) + " ]")
    return "\n".join(lines) + "\n"


def warm(paths: list[str]) -> int:
    """Read every file of ``paths`` once, so that both sides find them in the page cache."""
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                file = Path(root, name)
                if not file.is_symlink():
                    with file.open("rb") as handle:
                        while chunk := handle.read(1 << 20):
                            total += len(chunk)
    return total


def closure_workload(server: Server, args: argparse.Namespace, workdir: Path, salt: str) -> list[str]:
    """``niks3 push`` of a closure against ``nix copy`` of it, then the no-op push; returns its paths."""
    groups = choose_files(args.paths, args.closure_mib << 20)
    print(f"building {len(groups)} paths from {sum(map(len, groups))} files ...")
    start = time.monotonic()
    closure = build_expr(closure_expr(groups, salt), workdir / "build")
    closure_nar = nar_size(closure)
    print(f"built in {time.monotonic() - start:.1f} s: closure NAR {closure_nar / 2**20:.0f} MiB", flush=True)
    warm(closure)  # both sides read the files from the page cache
    label = f"closure: {len(closure)} paths, niks3 push"
    ours, server_cpu, _ = push(server, [closure[0]], label, closure_nar, args.push_options)
    theirs = nix_copy(closure[0], workdir, closure_nar)
    print(f"ratio niks3 push / nix copy: {ours.seconds / theirs.seconds:.2f} (wall; target <= 1.0)")
    cpu = f"CPU: client {ours.cpu / theirs.cpu:.2f}x nix copy"
    if server_cpu is not None:
        cpu += f", client + server side {(ours.cpu + server_cpu) / theirs.cpu:.2f}x"
    print(cpu, flush=True)
    push(server, [closure[0]], "closure again (cached)", 0, args.push_options)
    return closure


def big_workload(server: Server, args: argparse.Namespace, workdir: Path, salt: str) -> list[str]:
    """One NAR of ``--big-mib`` random bytes, then the no-op push; returns its path."""
    big_script = f"export PATH=/bin:/usr/bin; mkdir $out; head -c {args.big_mib << 20} /dev/urandom > $out/blob"
    (big,) = build_expr(
        f'derivation {{ name = "push-bench-big"; salt = "{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "{big_script}" ]; }}\n',
        workdir / "build",
    )
    big_nar = nar_size([big])
    push(server, [big], f"big: {args.big_mib} MiB NAR", big_nar, args.push_options)
    push(server, [big], "big again (cached)", 0, args.push_options)
    return [big]


def sign_upstream(paths: list[str], key_file: Path) -> None:
    """Give ``paths`` a signature by the upstream key in the local store, as substitution from it would."""
    subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "store", "sign", "--key-file", str(key_file), *paths],
        check=True,
        capture_output=True,
    )


def upstream_workload(server: Server, args: argparse.Namespace, workdir: Path, key_file: Path) -> list[str]:
    """Push a closure whose dependencies upstream signed, with and without the filter; returns its paths."""
    groups = choose_files(args.upstream_paths, args.upstream_mib << 20)
    built: dict[str, list[str]] = {}
    for mode in ("filtered", "unfiltered"):
        paths = build_expr(closure_expr(groups, secrets.token_hex(6)), workdir / f"build-{mode}")
        sign_upstream(paths[1:], key_file)  # every dependency is upstream's; the root is this build's own
        warm(paths)
        built[mode] = paths
    nar = nar_size(built["filtered"])
    deps = nar - nar_size(built["filtered"][:1])
    print(
        f"upstream: {len(groups)} paths, {nar / 2**20:.0f} MiB of NAR, of which {len(groups) - 1} dependencies "
        f"({deps / 2**20:.0f} MiB) are signed by the upstream key",
        flush=True,
    )
    lean, _, lean_sent = push(server, built["filtered"][:1], "upstream: niks3 push (filter on)", 0, args.push_options)
    full, _, full_sent = push(
        server,
        built["unfiltered"][:1],
        "upstream: --no-upstream-filter",
        nar,
        ["--no-upstream-filter", *args.push_options],
    )
    saved_bytes, saved_seconds = full_sent - lean_sent, full.seconds - lean.seconds
    print(
        f"saved by the upstream filter: {saved_bytes / 2**20:.1f} MiB sent "
        f"({100 * saved_bytes / max(full_sent, 1):.0f}% of what the full push sent), {saved_seconds:.2f} s "
        f"({100 * saved_seconds / full.seconds:.0f}% of its time)",
        flush=True,
    )
    return built["filtered"] + built["unfiltered"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("NIKS3_SERVER_URL"))
    parser.add_argument("--token-file", default=os.environ.get("NIKS3_TOKEN_FILE"))
    parser.add_argument("--dev", action="store_true", help="start a throwaway niks3d dev for the run")
    parser.add_argument("--paths", type=int, default=300)
    parser.add_argument("--closure-mib", type=int, default=700)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument(
        "--workloads", default="cost", help="comma-separated: cost (alone), or closure,big,upstream (with --dev)"
    )
    parser.add_argument("--upstream-paths", type=int, default=60)
    parser.add_argument("--upstream-mib", type=int, default=150)
    parser.add_argument(
        "--trusted-token",
        action="store_true",
        help="with --dev: mark the dev token trusted (NARs size-checked, not verified: docs/security.md)",
    )
    parser.add_argument("push_options", nargs="*", help="extra options for niks3 push (after --)")
    from bench import pushcost  # here: it imports this module

    pushcost.add_arguments(parser)
    args = parser.parse_args(argv)
    workloads = set(args.workloads.split(","))
    if workloads == {"cost"}:
        return pushcost.run(args)
    if unknown := workloads - {"closure", "big", "upstream"}:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if not args.dev:
        if not (args.server and args.token_file):
            parser.error("give --dev, or --server and --token-file (or NIKS3_SERVER_URL and NIKS3_TOKEN_FILE)")
        if "upstream" in workloads:
            print("the upstream workload needs --dev (its server must trust the bench's upstream key); skipped")
            workloads.discard("upstream")
    salt = secrets.token_hex(6)
    built: list[str] = []
    with tempfile.TemporaryDirectory(prefix="niks3-bench-") as tmp:
        workdir = Path(tmp)
        upstream_key = SecretKey.generate("bench-upstream-1")
        key_file = workdir / "upstream-key"
        key_file.write_text(upstream_key.to_text())
        server_cm: contextlib.AbstractContextManager[Server]
        if args.dev:
            server_cm = dev_server(workdir, upstream_key.public_key().to_text(), trusted=args.trusted_token)
        else:
            server_cm = contextlib.nullcontext(Server(args.server, args.token_file))
        try:
            with server_cm as server:
                if "closure" in workloads:
                    built += closure_workload(server, args, workdir, salt)
                if "big" in workloads:
                    built += big_workload(server, args, workdir, salt)
                if "upstream" in workloads:
                    built += upstream_workload(server, args, workdir, key_file)
        finally:
            subprocess.run(["nix-store", "--delete", *built], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
