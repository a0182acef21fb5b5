"""Scenario 10 (issue 14): four billing processes on one durable consumer, on PostgreSQL,
one of them SIGKILLed at random every few seconds.

The scenario functions live in :mod:`bench.faults.billing_scale_out`, where
``python -m bench.soak`` runs them too, with larger sizes; these are the CI sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.faults.billing_scale_out import scenario_billing_scale_out
from bench.postgres import throwaway_postgres

pytestmark = pytest.mark.faults


def test_four_billing_processes_one_sigkilled_at_random_bill_each_event_once(
    tmp_path: Path, nats_server_binary: str, postgres_server_url: sa.URL
) -> None:
    server = postgres_server_url.render_as_string(hide_password=False)
    with throwaway_postgres(server) as url:
        result = scenario_billing_scale_out(tmp_path, postgres_url=url, binary=nats_server_binary)
    print(result.summary())
    assert result.ok, result.summary()
    assert result.report.billed_records == result.report.written
