"""The processes below a pid, read from ``/proc``: what a server started by the harness and its children use.

For the benchmarks, which pin a server's processes to CPUs (bench/read.py) or add up their CPU time by kind
(bench/push.py). Linux only, like the rest of the harness.
"""

from __future__ import annotations

__all__ = ["ProcessStat", "process_tree"]

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """One process: its parent, its command name, and the CPU seconds it and its reaped children used."""

    pid: int
    ppid: int
    name: str
    cpu_seconds: float


def _stat(pid: int) -> ProcessStat:
    stat = Path(f"/proc/{pid}/stat").read_text()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 11 to 14 after the name
    ticks = sum(int(f) for f in fields[11:15])
    return ProcessStat(pid, int(fields[1]), name, ticks / os.sysconf("SC_CLK_TCK"))


def process_tree(root: int) -> list[ProcessStat]:
    """``root`` and every live process below it (none if ``root`` is gone)."""
    processes: dict[int, ProcessStat] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                processes[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    found: list[ProcessStat] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in processes:
            found.append(processes[pid])
            todo += [p.pid for p in processes.values() if p.ppid == pid]
    return found
