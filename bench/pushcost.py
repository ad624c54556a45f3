"""Push cost (issue 18's targets): every writer of the same closure, CPU per process, requests and bytes.

One run starts the stack of bench/pushstack.py and registers synthetic closures (bench/synthclosure.py) in the
host's store (Nix 2.8) and in the modern-Nix chroots' (``--suite``, comma-separated: sid's Nix 2.34 by default,
``--suite sid,trixie`` for trixie's 2.26 as well; each has a store of its own). Then, for the mixed closure
(``--paths`` paths, ``--nar-mib`` of NAR, half random, half text):

* ``nix copy --to 'http://<nginx WebDAV>/<dir>?compression=zstd'`` with Nix 2.8 and with each modern Nix;
* ``niks3 push`` with the ``trusted`` token (size checks only: niks3d's per-path cost) and, of a second closure of
  the same shape, with the ordinary ``bench`` token (every NAR verified: the difference is the per-byte cost of
  verification, set against the floor of zstd decompression + SHA-256 of these very NARs on this machine);
* ``nix copy --to 's3://nixcopy?endpoint=...'`` with the newest modern Nix against the same SeaweedFS;
* the cached re-push.

Then ``niks3 push`` (trusted token) of closures of ``--scale`` small paths each, and their cached re-push. Every
line: wall time, CPU seconds by process (client, niks3d, SeaweedFS, PostgreSQL, nginx), requests and bytes the
client sent (counted by nginx), and for niks3 push the statements and S3 requests niks3d made, per path.
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import compileall
import contextlib
import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

import niks3d
from bench import s3floor, synthclosure
from bench.push import NIKS3, NIX, Run, timed
from bench.pushstack import NIX_BUCKET, Counts, Stack, stack
from niks3d.nix.signing import SecretKey
from testkit import modernnix


@dataclass
class Line:
    label: str
    run: Run
    counts: Counts
    paths: int
    ends: dict[str, tuple[float, float]]  # by nginx port: first and last request's end, seconds after the start

    @property
    def server_cpu(self) -> float:
        return sum(v for k, v in self.counts.cpu.items())


def _measure(st: Stack, label: str, argv: list[str], paths: int, env: dict[str, str] | None = None) -> Line:
    before = st.counts()
    start = time.time()
    run = timed(argv, env=env)
    st.settle()
    line = Line(label, run, st.counts() - before, paths, st.ends(start))
    line.counts.statements -= 1  # the snapshot's own query
    _print(line)
    return line


def _print(line: Line) -> None:
    c = line.counts
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    client_reqs = c.requests["webdav"] + c.requests["api"] + c.requests["client_s3"]
    client_bytes = c.request_bytes["webdav"] + c.request_bytes["api"] + c.request_bytes["client_s3"]
    text = (
        f"{line.label:44} {line.run.seconds:7.2f} s  client CPU {line.run.cpu:6.2f} s  RSS {line.run.rss:4} MiB"
        f"  sent {client_bytes / 2**20:7.1f} MiB in {client_reqs:6} requests  (servers: {cpu or 'nothing'})"
        f"  load {os.getloadavg()[0]:.1f}"
    )
    # where the wall time went: when the first and the last API call and client S3 request ended
    spans = [f"{what} {line.ends[what][0]:.2f}-{line.ends[what][1]:.2f} s" for what in ("api", "client_s3")
             if what in line.ends]  # fmt: skip
    if spans:
        text += f"\n{'':44} requests ended, after the start: {', '.join(spans)} (wall {line.run.seconds:.2f} s)"
    if c.requests["api"]:
        per = max(line.paths, 1)
        text += (
            f"\n{'':44} niks3d {1000 * c.cpu.get('niks3d', 0) / per:.2f} ms CPU/path, "
            f"{c.statements / per:.2f} SQL statements/path, {c.requests['server_s3'] / per:.2f} S3 requests/path "
            f"by niks3d, {c.requests['client_s3'] / per:.2f} by the client, {c.requests['api']} API calls"
        )
    print(text, flush=True)


def floor_seconds(closure: synthclosure.Closure) -> float:
    """CPU seconds of the work verification cannot avoid: SHA-256 of the zstd file, zstd decompression, SHA-256
    of the NAR (the files compressed here first, outside the measurement)."""
    total = 0.0
    for path in closure.paths:
        nar = b"".join(synthclosure._nar(path.files))
        body = zstandard.ZstdCompressor(level=3).compress(nar)
        start = time.process_time()
        hashlib.sha256(body).digest()
        hashlib.sha256(zstandard.ZstdDecompressor().decompress(body, max_output_size=len(nar))).digest()
        total += time.process_time() - start
    return total


class Modern:
    """The modern Nix in its chroot, with a store of its own under the bench's directory."""

    def __init__(self, suite: str, workdir: Path) -> None:
        root = modernnix.ensure_chroot(suite)
        self.nix = modernnix.ModernNix(root, workdir / f"modern-nix-{suite}", shared=[workdir])
        self.version = ".".join(map(str, self.nix.version))

    def argv(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        return modernnix._in_namespace(self.nix.root, [*self.nix.env(env), *argv], binds=self.nix._binds)


def _push(st: Stack, label: str, root: str, paths: int, token: str) -> Line:
    argv = [*NIKS3, "push", "--server", st.api_url, "--token-file", str(st.tokens[token]), "--no-progress", root]
    return _measure(st, label, argv, paths)


def _copy_http(st: Stack, label: str, root: str, paths: int, workdir: Path, modern: Modern | None) -> Line:
    target = f"{st.webdav_url}/{os.urandom(4).hex()}?compression=zstd"
    if modern is None:
        env = {**os.environ, "XDG_CACHE_HOME": str(workdir / f"xdg-{os.urandom(4).hex()}")}
        return _measure(st, label, [*NIX, "copy", "--to", target, root], paths, env)
    return _measure(st, label, modern.argv(["nix", "copy", "--to", target, root]), paths)


def _copy_s3(st: Stack, label: str, root: str, paths: int, modern: Modern) -> Line | None:
    """``nix copy --to s3://`` of the modern Nix, with what niks3d publishes: zstd at niks3 push's level (3),
    a ``.ls`` listing per path, narinfos signed (a key of its own); Nix's defaults otherwise (no parallel
    compression, no multipart, as many paths at once as cores: its copy's thread pool).

    It is given SeaweedFS's admin keys (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), so a Nix built with
    S3 signing (Nix's ``s3-aws-auth`` feature) signs its requests. Debian's Nix 2.33+ is built without it (it
    needs aws-crt-cpp, which Debian does not package) and sends every request unsigned, which SeaweedFS refuses
    with AccessDenied; so the stack lets anonymous requests write this one bucket, and the line says how many
    requests were signed. Signing costs one HMAC chain per request (libcurl sends the body as UNSIGNED-PAYLOAD),
    so an unsigned copy is a fair wall-time figure.
    """
    key = st.workdir / "nixcopy.key"  # under the workdir, which the chroot sees at the same path
    if not key.exists():
        key.write_text(SecretKey.generate("nixcopy-1").to_text())
        key.chmod(0o600)
    url = (
        f"s3://{NIX_BUCKET}?endpoint={st.client_s3}&scheme=http&region={st.region}"
        f"&compression=zstd&compression-level=3&write-nar-listing=true&secret-key={key}"
    )
    access, secret = st.s3_keys
    env = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    try:
        line = _measure(st, label, modern.argv(["nix", "copy", "--to", url, root], env), paths)
    except SystemExit as exc:
        print(f"{label:44} FAILED: {str(exc)[-1500:]}", flush=True)
        return None
    signed = line.counts.requests["client_s3_signed"]
    print(f"{'':44} {signed} of {line.counts.requests['client_s3']} S3 requests signed (SigV4 headers)", flush=True)
    return line


def _ratio(what: str, ours: float, theirs: float, target: float) -> None:
    ratio = ours / max(theirs, 1e-9)
    verdict = "met" if ratio <= target else "NOT met"
    print(f"  {what}: {ours:.2f} / {theirs:.2f} = {ratio:.2f}x (target <= {target}x: {verdict})", flush=True)


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as keep:
        if args.workdir is not None:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True)
        else:
            workdir = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="niks3-pushcost-")))
        moderns: list[Modern] = []
        for suite in [] if args.no_modern else [s for s in args.suite.split(",") if s]:
            moderns.append(Modern(suite, workdir))
            print(f"modern Nix: {moderns[-1].version} ({suite} chroot)", flush=True)
        # niks3d's modules compiled once, as an installed client has them: with PYTHONDONTWRITEBYTECODE set (as
        # it is on the machines this runs on) every niks3 command would compile them again, ~0.05-0.1 s of CPU
        compileall.compile_dir(Path(niks3d.__file__).parent, quiet=1)
        seed = int.from_bytes(os.urandom(4), "big")
        start = time.monotonic()
        writers: list[synthclosure.Closure] = []  # --paths 0: the scale workload only
        if args.paths:
            writers = [synthclosure.mixed_closure(args.paths, args.nar_mib << 20, seed=seed + i) for i in (0, 1)]
        scales = [synthclosure.small_closure(n, seed=seed + 2 + n) for n in args.scale]
        for closure in (*writers, *scales):
            synthclosure.import_closure(closure)
        for modern in moderns if writers else []:
            synthclosure.import_closure(writers[0], modern.argv(["nix-store", "--import"]))
        mib = synthclosure.total_nar_size(writers[0]) / 2**20 if writers else 0.0
        print(
            f"closures registered in {time.monotonic() - start:.0f} s: {args.paths} paths, {mib:.0f} MiB of NAR; "
            f"small: {', '.join(str(n) for n in args.scale)} paths; load: {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        try:
            with stack(workdir) as st:
                if writers:
                    _writers(st, args, workdir, moderns, writers[0], writers[1], mib)
                _scale(st, scales)
        finally:
            every = [p for c in (*writers, *scales) for p in c.store_paths]
            for i in range(0, len(every), 2000):
                subprocess.run(["nix-store", "--delete", *every[i : i + 2000]], capture_output=True, check=False)
    return 0


def _writers(
    st: Stack,
    args: argparse.Namespace,
    workdir: Path,
    moderns: list[Modern],
    mixed: synthclosure.Closure,
    verified: synthclosure.Closure,
    mib: float,
) -> None:
    n = args.paths
    print(f"\n== {n} paths, {mib:.0f} MiB of NAR, half random, half text ==", flush=True)
    copies = [_copy_http(st, "nix copy --to http://nginx (Nix 2.8)", mixed.root, n, workdir, None)]
    for modern in moderns:
        copies.append(_copy_http(st, f"nix copy --to http://nginx (Nix {modern.version})", mixed.root, n, workdir,
                                 modern))  # fmt: skip
    trusted = _push(st, "niks3 push (trusted token: size checks)", mixed.root, n, "trusted")
    full = _push(st, "niks3 push (ordinary token: NARs verified)", verified.root, n, "bench")
    s3 = None
    if moderns:
        newest = max(moderns, key=lambda m: m.nix.version)
        s3 = _copy_s3(st, f"nix copy --to s3:// (Nix {newest.version})", mixed.root, n, newest)
    again = _push(st, "niks3 push again (cached)", mixed.root, n, "trusted")
    print("targets:", flush=True)
    for base in copies:
        _ratio(f"client CPU, niks3 push / {base.label}", full.run.cpu, base.run.cpu, 1.2)
        _ratio(f"client CPU, niks3 push (trusted token) / {base.label}", trusted.run.cpu, base.run.cpu, 1.2)
    niks3d = trusted.counts.cpu.get("niks3d", 0.0)
    print(f"  niks3d CPU per path (trusted push): {1000 * niks3d / n:.2f} ms (target < 1 ms)", flush=True)
    extra = full.counts.cpu.get("niks3d", 0.0) - niks3d
    floor = floor_seconds(verified)
    print(
        f"  niks3d CPU per MiB verified: {1000 * extra / mib:.1f} ms (verified push minus trusted push); "
        f"the floor (SHA-256 of file and NAR, zstd decompression) {1000 * floor / mib:.1f} ms: "
        f"{extra / max(floor, 1e-9):.2f}x",
        flush=True,
    )
    if s3 is not None:
        _ratio("wall, niks3 push (verified) / nix copy --to s3://", full.run.seconds, s3.run.seconds, 1.2)
        _ratio("wall, niks3 push (trusted) / nix copy --to s3://", trusted.run.seconds, s3.run.seconds, 1.2)
        for ours in (full, trusted):
            mine, theirs = ours.run.cpu + ours.server_cpu, s3.run.cpu + s3.server_cpu
            print(
                f"  CPU of every process (client and servers), {ours.label} / nix copy --to s3://: "
                f"{mine:.2f} / {theirs:.2f} = {mine / max(theirs, 1e-9):.2f}x (no target)",
                flush=True,
            )
    print(f"  cached re-push of {n} paths: {again.run.seconds:.2f} s", flush=True)


def _scale(st: Stack, scales: list[synthclosure.Closure]) -> None:
    for closure in scales:
        n = len(closure.paths)
        print(f"\n== {n} small paths ==", flush=True)
        first = _push(st, f"niks3 push, {n} paths (trusted token)", closure.root, n, "trusted")
        again = _push(st, f"niks3 push again, {n} paths (cached)", closure.root, n, "trusted")
        niks3d = first.counts.cpu.get("niks3d", 0.0)
        print(f"  niks3d CPU per path: {1000 * niks3d / n:.2f} ms (target < 1 ms)", flush=True)
        print(f"  cached re-push: {again.run.seconds:.2f} s (target < 2 s at 10,000 paths)", flush=True)
    if scales:
        _floor()


def _floor() -> None:
    """What the S3 requests a small path needs at the least cost niks3d, measured now (bench/s3floor.py): the
    bound under the per-path figures above, whatever niks3d's own code does."""
    figures = s3floor.measure()
    shown = ", ".join(f"{label} {figures[label]:.2f}" for label in dict.fromkeys(s3floor.PER_PATH))
    print(
        f"\n  the S3 floor of a small path: {len(s3floor.PER_PATH)} requests (copy, NAR read, listing PUT, narinfo "
        f"PUT) = {s3floor.per_path_floor(figures):.2f} ms of niks3d CPU (ms per request: {shown}; load "
        f"{os.getloadavg()[0]:.1f})",
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nar-mib", type=int, default=258, help="writers workload: MiB of NAR (default 258)")
    parser.add_argument(
        "--scale",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[300, 3000, 10000],
        help="scale workload: comma-separated closure sizes of small paths (default 300,3000,10000)",
    )
    parser.add_argument(
        "--suite",
        default=os.environ.get("NIKS3_MODERN_NIX_SUITE") or "sid",
        help="modern-Nix chroots, comma-separated (default sid; sid,trixie adds Nix 2.26)",
    )
    parser.add_argument("--no-modern", action="store_true", help="skip the modern-Nix writers")
    parser.add_argument(
        "--workdir", help="keep the stack's files (niks3d.log, nginx's access log) in this new directory"
    )
