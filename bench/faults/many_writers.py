"""Scenario 6 of issue 5: eight writer processes on one SQLite outbox, the shipper running.

The file does not exist when they start: all eight (and the shipper) create and migrate it
at the same moment, as the workers of a service starting together would. Half write
through :class:`outbox.Outbox` (group commit), half through ``record_usage`` in their own
session transactions together with a business row; all as fast as they can. Required:
not one error reaches a writer (``database is locked`` above all), every writer commits
exactly what it was asked to, every business row has its event, and the audit holds.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from bench.faults.harness import staged
from bench.faults.results import ScenarioResult, check_clean_stops, check_writers, timed


def _business_rows(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM inference_requests").fetchone()[0])


def scenario_many_writers(
    root: Path,
    *,
    writers: int = 8,
    events: int = 1_000,
    binary: str | None = None,
) -> ScenarioResult:
    """Scenario 6: ``writers`` processes write ``events`` each, flat out, on a fresh file."""
    with timed() as elapsed, staged(root, binary=binary) as (ws, nats):
        billing = ws.billing(nats.url)
        assert not ws.outbox_path.exists()
        group = ws.writers(writers, events=events, api=["outbox", "session"], concurrency=4)
        shipper = ws.shipper(nats.url)
        results = group.wait(180)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        shipper_exit = shipper.stop()
        billing_exit = billing.stop()
        report = ws.audit(nats.url)
        business = _business_rows(ws.outbox_path)
    slowest = max(r.finished_at - r.started_at for r in results)
    locked = sum(r.locked_errors for r in results)
    session_events = sum(r.written for r in results if r.api == "session")
    result = ScenarioResult("6 many writers", report, 0, elapsed())
    result.notes += [
        f"{writers} writer processes started together on a fresh outbox file "
        f"({writers // 2} Outbox, {writers - writers // 2} record_usage in a session), "
        f"{events} events each, flat out, beside a running shipper",
        f"committed {written} of {writers * events} in {slowest:.1f} s "
        f"({written / slowest:.0f} events/s); 'database is locked' errors: {locked}",
        f"business rows {business} for {session_events} session-written events",
        f"shipper/billing exit codes {shipper_exit}/{billing_exit}",
    ]
    check_writers(result, results)
    result.check(locked == 0, f"{locked} 'database is locked' errors reached the writers")
    for r in results:
        result.check(r.written == events, f"writer {r.writer} committed {r.written}/{events}")
    result.check(business == session_events, "business rows != session-written events")
    result.check(report.written == writers * events, "the audit did not see every event")
    check_clean_stops(result, shipper_exit, billing_exit)
    return result
