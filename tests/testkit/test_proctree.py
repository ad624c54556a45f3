"""process_tree finds a process's children and grandchildren, with names and CPU time, and nothing else."""

from __future__ import annotations

import os
import subprocess
import time

from testkit.proctree import process_tree


def test_the_tree_holds_the_children_and_grandchildren_and_only_them() -> None:
    # sh starts a sleep and a busy loop, then waits; the loop is a subshell of sh.
    script = "sleep 30 & (while :; do :; done) & wait"
    with subprocess.Popen(["/bin/sh", "-c", script]) as shell:
        try:
            deadline = time.monotonic() + 10
            while len(tree := process_tree(shell.pid)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # let the loop burn some CPU
            tree = process_tree(shell.pid)
            assert tree[0].pid == shell.pid and tree[0].ppid == os.getpid()
            names = sorted(p.name for p in tree)
            assert names == ["sh", "sh", "sleep"], names
            assert all(p.ppid == shell.pid for p in tree[1:])
            assert sum(p.cpu_seconds for p in tree) > 0
            assert os.getpid() not in {p.pid for p in tree}
        finally:
            for p in process_tree(shell.pid)[1:]:
                os.kill(p.pid, 9)
            shell.kill()
    assert process_tree(shell.pid) == []
