"""Benchmark: what ``niks3 hook`` as Nix's post-build hook costs a build, and what one call of it costs.

1. A build of ``--derivations`` small derivations (default 200, in layers of 20, each needing two of the layer
   below) with ``nix-build``, once without a post-build hook and once with ``niks3-hook``, each of a fresh graph
   (a new salt, so everything really builds), alternating ``--rounds`` times. Nix 2.8 runs the hook synchronously
   in its build loop, so every call's time adds to the build.
2. The hook's own time per call: ``--calls`` runs of the installed ``niks3-hook`` program with one path in
   ``OUT_PATHS``, next to the interpreter's start-up alone (``python -c pass``, ``python -S -c pass``) and the
   hook script ``niks3 build`` writes (``python -S`` with the package on ``PYTHONPATH``).

    .venv/bin/python -m bench.hook [--derivations 200] [--rounds 2] [--calls 50] [--sleep 0.25]

``--sleep S`` makes each derivation's builder sleep S seconds, for builds whose steps do some work. The queues
are held open during the run, as the running agent holds its queue (a hook's connection is then never the last
one, and closing it does not checkpoint and fsync the WAL); ``--cold`` measures without.

Targets (issue 13): the hook adds less than 5 % to the build, and under 20 ms per call. A development install
(``pip install -e``) pays for setuptools' editable-import finder at every interpreter start; the ``-S`` lines show
the cost without it, which is what an installed wheel or the Nix package comes closer to.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from niks3d.client.hookscript import write_hook_script
from niks3d.client.queue import Queue
from testkit.nixfixtures import NO_SUBSTITUTERS

HOOK = str(Path(sys.executable).parent / "niks3-hook")


def graph_expr(salt: str, count: int, width: int = 20, sleep: float = 0.0) -> str:
    """``count`` derivations in layers of ``width``; each needs two of the layer below (and sleeps ``sleep`` s)."""
    body = [f'    d{i} = mk "hb-{i}" [ {_deps(i, width)} ];' for i in range(count)]
    return (
        "\n".join(
            [
                "let",
                f'  mk = name: deps: derivation {{ inherit name; salt = "{salt}"; system = builtins.currentSystem;',
                '    builder = "/bin/sh"; args = [ "-c" ("'
                + (f"/bin/sleep {sleep}; " if sleep > 0 else "")
                + 'echo " + toString deps + " > $out") ]; };',
                "in builtins.attrValues (rec {",
                *body,
                "})",
            ]
        )
        + "\n"
    )


def _deps(i: int, width: int) -> str:
    layer, pos = divmod(i, width)
    if layer == 0:
        return ""
    return f"d{(layer - 1) * width + pos} d{(layer - 1) * width + (pos + 1) % width}"


def build(
    workdir: Path, count: int, hook: str | None, env: dict[str, str], sleep: float = 0.0
) -> tuple[float, list[str]]:
    expr = workdir / f"graph-{secrets.token_hex(4)}.nix"
    expr.write_text(graph_expr(secrets.token_hex(6), count, sleep=sleep))
    argv = ["nix-build", str(expr), "--no-out-link", *NO_SUBSTITUTERS, "--max-jobs", str(os.cpu_count() or 1)]
    if hook is not None:
        argv += ["--option", "post-build-hook", hook]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"nix-build failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.split()


def per_call(argv: list[str], env: dict[str, str], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _summary(label: str, times: list[float]) -> str:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return f"  {label:<44} median {statistics.median(times):6.1f} ms   p95 {p95:6.1f} ms   min {times[0]:6.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--derivations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each derivation's builder sleeps")
    parser.add_argument("--cold", action="store_true", help="no connection held open, as without a running agent")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    built: list[str] = []
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="niks3-bench-hook-") as tmp:
        work = Path(tmp)
        shim = write_hook_script(work / "hook.sh", str(work / "shim.sqlite"))
        slow = write_hook_script(work / "hook-python.sh", str(work / "slow.sqlite"), sqlite3=None)
        hooks: dict[str, str | None] = {
            "no hook": None,
            "true (any hook's floor)": true,
            "niks3-hook (console script)": HOOK,
            "niks3 hook-script (sh+sqlite3)": str(shim),
            "niks3 hook-script, python -S": str(slow),
        }
        times: dict[str, list[float]] = {label: [] for label in hooks}
        hook_env = {**env, "NIKS3_QUEUE": str(work / "queue.sqlite")}
        # The running agent keeps its connection to the queue open; then a hook's connection is never the last
        # one, and closing it does not checkpoint the WAL (which would fsync). --cold measures without it.
        files = ("queue.sqlite", "shim.sqlite", "slow.sqlite", "calls.sqlite")
        agents = [] if args.cold else [Queue(str(work / f)) for f in files]
        try:
            for _ in range(args.rounds):
                for label, hook in hooks.items():
                    seconds, paths = build(work, args.derivations, hook, hook_env, args.sleep)
                    times[label].append(seconds)
                    built += paths
            queued = sum(len(Queue(str(work / f)).entries()) for f in ("queue.sqlite", "shim.sqlite", "slow.sqlite"))

            one = "/nix/store/" + "a" * 32 + "-bench"
            call_env = {**env, "OUT_PATHS": one, "NIKS3_QUEUE": str(work / "calls.sqlite")}
            lines = [
                _summary("true", per_call([true], env, args.calls)),
                _summary("python -c pass (this venv)", per_call([sys.executable, "-c", "pass"], env, args.calls)),
                _summary("python -S -c pass", per_call([sys.executable, "-S", "-c", "pass"], env, args.calls)),
                _summary("niks3-hook (console script, this venv)", per_call([HOOK], call_env, args.calls)),
                _summary("niks3 hook-script (sh + sqlite3)", per_call([str(shim)], call_env, args.calls)),
                _summary("niks3 hook-script without sqlite3 (python -S)", per_call([str(slow)], call_env, args.calls)),
            ]
        finally:
            for agent in agents:
                agent.close()
            if built:
                subprocess.run(["nix-store", "--delete", *built], capture_output=True, check=False)
    base = min(times["no hook"])
    what = f"build of {args.derivations} derivations" + (f" sleeping {args.sleep} s each" if args.sleep else "")
    agent = "no agent connected (--cold)" if args.cold else "the queues held open as by a running agent"
    print(f"{what}, nix-build --max-jobs {os.cpu_count()}, {args.rounds} rounds, {agent}:")
    for label, runs in times.items():
        best = min(runs)
        extra = "" if runs is times["no hook"] else f"  {(best - base) / base * 100:+6.1f} %"
        extra += "" if runs is times["no hook"] else f"  {(best - base) / args.derivations * 1000:+5.1f} ms/drv"
        print(f"  {label:<30} {', '.join(f'{s:6.2f}' for s in runs)} s  best {best:6.2f} s{extra}")
    print(f"  (target: the niks3 hook adds < 5 %; {queued} paths were queued)")
    print(f"one hook call ({args.calls} calls each; target < 20 ms):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
