"""``python -m bench.session_writers``, the README's measure of session writers, runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_prints_every_way_with_every_call_committed() -> None:
    small = ["--processes", "2", "--rate", "20", "--seconds", "0.5"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.session_writers", *small],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()}
    for way in ("session", "session, pool 1", "session+lock", "Outbox"):
        assert way in rows, done.stdout
        assert " 20 " in rows[way] and "calls missing" not in rows[way], rows[way]
