"""The benchmarks' table: rows with a goal and a verdict, figures, and the machine's state."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from usage_demo.natsserver import find_nats_server_binary


@dataclass
class Row:
    case: str
    measured: str
    detail: str
    goal: str
    result: str  # PASS, MISS or info


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    headers = ("case", "measured", "detail", "goal", "result")
    cells = [(r.case, r.measured, r.detail, r.goal, r.result) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    out("-+-".join("-" * w for w in widths))
    for c in cells:
        out(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def per_s(rate: float) -> str:
    return f"{rate:,.0f}/s"


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MB"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def server_version() -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(
            [find_nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip().removeprefix("nats-server: ")
    return "?"


def add_repeat_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--repeat``: runs of ``what``, interleaved, the best of each kept (the box's speed
    flips within seconds, :mod:`bench.speed`); see :func:`repeat_count`."""
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs of {what}, interleaved; the best of each is kept (default 3, 1 with --quick)",
    )


def repeat_count(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--repeat`` as given, else 3 (1 for a ``--quick`` smoke run)."""
    repeat: int | None = args.repeat
    if repeat is None:
        return 1 if args.quick else 3
    if repeat < 1:
        parser.error("--repeat must be 1 or more")
    return repeat
