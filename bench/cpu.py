"""Where the CPU went during a benchmark phase: this process's threads by role, another
process (nats-server), and the machine, read from /proc (Linux).

A cProfile run shows which functions cost the most but slows the loop it measures, and
sees only one thread. These counters cost nothing while the phase runs, so they answer
the question the profile cannot: is the event loop's thread saturated (the bottleneck),
or is it waiting for the database thread, for nats-server, or for a free core?
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc .../stat file. The name field may hold spaces and
    parentheses: the fields after its last ')' start at field 3 (state)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # time.perf_counter()
    threads: dict[str, float]  # role -> CPU seconds of this process's threads
    other: float  # CPU seconds of the other process (-1: unknown)
    machine_busy: float
    machine_total: float


def snapshot(roles: Callable[[str], str], other_pid: int | None = None) -> CpuSnapshot:
    """CPU used so far, per role of this process's threads (``roles`` maps a Python
    thread name, or ``"main"``, to a role), by ``other_pid``, and by the machine."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    threads: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        name = "main" if tid == main else names.get(tid, "?")
        try:
            used = _cpu_seconds(task / "stat")
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        role = roles(name)
        threads[role] = threads.get(role, 0.0) + used
    other = -1.0
    if other_pid is not None:
        with contextlib.suppress(FileNotFoundError):  # it exited: unknown
            other = _cpu_seconds(Path(f"/proc/{other_pid}/stat"))
    busy, total = _machine()
    return CpuSnapshot(time.perf_counter(), threads, other, busy, total)


@dataclass(frozen=True)
class CpuUse:
    """Cores busy on average between two snapshots (1.0: one core all the time)."""

    seconds: float
    threads: dict[str, float]
    other: float | None
    machine: float
    cores: int

    def describe(self, other_name: str) -> str:
        parts = [f"{role} {cores:.2f}" for role, cores in self.threads.items()]
        if self.other is not None:
            parts.append(f"{other_name} {self.other:.2f}")
        parts.append(f"machine {self.machine:.2f} of {self.cores}")
        return ", ".join(parts)


def between(first: CpuSnapshot, last: CpuSnapshot) -> CpuUse:
    seconds = max(last.at - first.at, 1e-9)
    roles = sorted(set(first.threads) | set(last.threads))
    threads = {
        role: (last.threads.get(role, 0.0) - first.threads.get(role, 0.0)) / seconds
        for role in roles
    }
    # A thread that ended between the snapshots takes its CPU with it: its role can
    # come out low (never below zero).
    threads = {role: max(0.0, cores) for role, cores in threads.items()}
    other = (last.other - first.other) / seconds if first.other >= 0 and last.other >= 0 else None
    wall = max(last.machine_total - first.machine_total, 1e-9)
    cores = os.cpu_count() or 1
    machine = (last.machine_busy - first.machine_busy) / wall * cores
    return CpuUse(seconds, threads, other, machine, cores)
