"""Scenarios 1 and 5 of issue 5: SIGKILL the shipper, then the billing consumer, in a loop.

The scenario functions live in :mod:`bench.faults.crash_loops`, where
``python -m bench.soak`` runs them too, with larger sizes; these are the CI sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults.crash_loops import scenario_billing_crash_loop, scenario_shipper_crash_loop

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("batch_publish", [True, False], ids=["fast_ingest", "per_message"])
def test_shipper_sigkilled_twenty_times_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server_binary: str, batch_publish: bool
) -> None:
    result = scenario_shipper_crash_loop(
        tmp_path, binary=nats_server_binary, batch_publish=batch_publish
    )
    print(result.summary())
    assert result.ok, result.summary()


def test_billing_consumer_sigkilled_in_a_loop_charges_each_event_once(
    tmp_path: Path, nats_server_binary: str
) -> None:
    result = scenario_billing_crash_loop(tmp_path, binary=nats_server_binary)
    print(result.summary())
    assert result.ok, result.summary()
