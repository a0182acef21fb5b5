"""Scenario 6 of issue 5: eight writer processes on one SQLite outbox, the shipper running.

The scenario functions live in :mod:`bench.faults.many_writers`, where
``python -m bench.soak`` runs them too, with larger sizes; these are the CI sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults.many_writers import scenario_many_writers

pytestmark = pytest.mark.faults


def test_eight_writer_processes_no_locked_errors_exact_counts(
    tmp_path: Path, nats_server_binary: str
) -> None:
    result = scenario_many_writers(tmp_path, binary=nats_server_binary)
    print(result.summary())
    assert result.ok, result.summary()
