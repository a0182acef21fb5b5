"""Scenarios 2 and 3 of issue 5: NATS stopped for a while, and NATS frozen (SIGSTOP).

The scenario functions live in :mod:`bench.faults.nats_outage`, where
``python -m bench.soak`` runs them too, with larger sizes; these are the CI sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults.nats_outage import scenario_nats_freeze, scenario_nats_outage

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("batch_publish", [True, False], ids=["fast_ingest", "per_message"])
def test_nats_outage_writers_unaffected_and_everything_ships_after(
    tmp_path: Path, nats_server_binary: str, batch_publish: bool
) -> None:
    result = scenario_nats_outage(tmp_path, binary=nats_server_binary, batch_publish=batch_publish)
    print(result.summary())
    assert result.ok, result.summary()


@pytest.mark.parametrize("batch_publish", [True, False], ids=["fast_ingest", "per_message"])
def test_nats_freeze_timed_out_publishes_are_not_duplicated_in_the_stream(
    tmp_path: Path, nats_server_binary: str, batch_publish: bool
) -> None:
    result = scenario_nats_freeze(tmp_path, binary=nats_server_binary, batch_publish=batch_publish)
    print(result.summary())
    assert result.ok, result.summary()
