"""A CPU speed probe: the same small pure-Python job timed at each phase of a benchmark.

The development box's speed is not steady: this probe's work took ~10 ms at some moments
and ~17 ms at others, a second or a minute apart, with nothing else running (2026-12-01;
the load average does not show it). A ratio to a ceiling measured 20 s earlier may then
compare a fast moment with a slow one. The probe is read as each phase starts, printed
beside it and summed up in a row: a hint, not a correction, as the speed can change
within a phase too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.report import Row

#: Iterations of the probe's loop: ~10 ms at the box's faster moments.
_WORK = 300_000
#: Readings further apart than this are unlike moments (the benchmarks' own noise is
#: +-30%, see the README).
LIKE_MOMENTS = 1.3


def probe_ms() -> float:
    """The fastest of three runs of a fixed loop, in ms (about 30-60 ms in all)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(_WORK):
            total += i * i
        best = min(best, time.perf_counter() - start)
    return best * 1000


@dataclass
class SpeedLog:
    """The fastest probe reading of each phase (a phase run more than once, as
    ``bench.shipper --repeat`` does, keeps its best, as the benchmark keeps its best run)."""

    readings: dict[str, float] = field(default_factory=dict)

    def note(self, phase: str) -> float:
        reading = probe_ms()
        self.readings[phase] = min(reading, self.readings.get(phase, reading))
        return reading

    def row(self, compared: dict[str, list[str]]) -> Row:
        """A row on whether the phases of each ratio ran at like speeds: ``compared``
        maps a ratio's name to the phases it divides."""
        fastest, slowest = min(self.readings.values()), max(self.readings.values())
        unlike = []
        for name, phases in compared.items():
            values = [self.readings[p] for p in phases if p in self.readings]
            if values and max(values) / min(values) > LIKE_MOMENTS:
                unlike.append(f"{name} {max(values) / min(values):.1f}x apart")
        detail = (
            "unlike moments: " + ", ".join(unlike) + " (read those ratios with that)"
            if unlike
            else f"every ratio's phases within {LIKE_MOMENTS}x of each other"
        )
        return Row(
            "CPU speed probe (a fixed Python loop) at each phase",
            f"{fastest:.1f}-{slowest:.1f} ms",
            detail,
            "-",
            "info",
        )
