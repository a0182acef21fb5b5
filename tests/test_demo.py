"""The README's first command, smaller: the whole chain runs and its own checks pass."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_demo_with_chaos_passes_its_checks() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "usage_demo",
            "--events",
            "800",
            "--rate",
            "800",
            "--chaos",
            "--replay",
            "50",
            "--timeout",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "all checks passed" in run.stdout
    assert "[FAILED]" not in run.stdout
    # the faults really happened
    assert "killed nats-server" in run.stdout
    assert run.stdout.count("killed the shipper") == 2
    assert "replayed 50 already-billed events" in run.stdout


def test_demo_refuses_bad_options() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "usage_demo", "--events", "many"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "--events" in run.stderr
