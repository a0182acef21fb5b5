"""The README's first command, smaller: the whole chain runs and its own checks pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    # every replay is checked by its own message id, not by a count of duplicates
    assert "[ok] each of the 50 replays absorbed by billing's inbox (checked by message id)" in (
        run.stdout
    )
    # a restarted shipper says on screen what it does about the killed one's lease
    assert "-- restarted shipper: the shipper holding the outbox lease" in run.stdout
    assert "taking over at once" in run.stdout


@pytest.mark.timeout(300)
def test_scripts_demo_installs_once_then_starts_offline() -> None:
    """The second run of ``bash scripts/demo`` finds .venv current: no pip, no network."""
    first = subprocess.run(
        ["bash", "scripts/demo", "--help"], cwd=REPO, capture_output=True, text=True, timeout=280
    )
    assert first.returncode == 0, first.stdout + first.stderr
    offline = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/nonexistent",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    again = subprocess.run(
        ["bash", "scripts/demo", "--help"],
        cwd=REPO,
        env=offline,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(
        "==> .venv is up to date (pyproject.toml unchanged): not reinstalling\n"
    ), again.stdout
    assert "usage: usage-demo" in again.stdout


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
