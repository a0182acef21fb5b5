"""Fault-injection scenarios (issue 5): the ``faults`` marker and a per-test workspace.

Run only these with ``pytest -m faults``; skip them with ``-m "not faults"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.faults.harness import Workspace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection scenarios of issue 5 (real processes, minutes)"
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    """Files of one scenario under ``tmp_path``; every process it started is killed after."""
    with Workspace(tmp_path / "run") as made:
        yield made
