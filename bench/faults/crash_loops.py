"""Scenarios 1 and 5 of issue 5: SIGKILL the shipper, then the billing consumer, in a loop.

1. Writer processes record events while the shipper (``python -m shipper run``) is
   SIGKILLed at random moments, at least 20 times, and restarted each time.
5. The same with the billing consumer (``python -m billing run``) as the victim.

Both end with the audit: every written event once in the stream, billed once, the ledger
equal to the priced sum of what was written, nothing left in the outbox. The CI sizes are
below; ``python -m bench.soak`` runs the same functions with larger ones.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.faults.harness import staged
from bench.faults.helpers import consumer_deliveries, in_flight_recoveries
from bench.faults.procs import crash_loop
from bench.faults.results import (
    ScenarioResult,
    check_clean_stops,
    check_publish_mode,
    check_writers,
    timed,
)


def scenario_shipper_crash_loop(
    root: Path,
    *,
    events: int = 50_000,
    writers: int = 4,
    kills: int = 20,
    write_seconds: float = 25.0,
    seed: int | None = None,
    binary: str | None = None,
    batch_publish: bool = True,
) -> ScenarioResult:
    """Scenario 1: ``writers`` processes write ``events`` in about ``write_seconds`` while
    the shipper is SIGKILLed at least ``kills`` times (and for as long as they write).
    ``batch_publish``: fast-ingest batches (False: one PubAck per message)."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    with timed() as elapsed, staged(root, binary=binary) as (ws, nats):
        shipper = ws.shipper(nats.url, batch_publish=batch_publish)
        billing = ws.billing(nats.url)
        per_writer = events // writers
        group = ws.writers(writers, events=per_writer, rate=per_writer / write_seconds)
        made = crash_loop(
            shipper,
            kills=kills,
            rng=rng,
            ready=lambda: "holding the outbox lease" in shipper.log_since_start(),
            delay=(0.0, 0.6),
            keep_going=lambda: group.running,
        )
        loop_done = elapsed()
        results = group.wait(60)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        settled = elapsed()
        shipper_exit = shipper.stop()
        billing_exit = billing.stop()
        report = ws.audit(nats.url)
        audited = elapsed()
    recovered, rows = in_flight_recoveries(shipper.log_text())
    notes = [
        f"seed {seed}; {writers} writer processes, {per_writer} events each, "
        f"{per_writer / write_seconds:.0f}/s each",
        f"writers: {written} committed, {sum(r.errors for r in results)} errors reached them",
        f"shipper SIGKILLed {made} times and restarted each time; {recovered} restarts "
        f"found rows in flight ({rows} rows counted an attempt)",
        f"exit codes after SIGTERM: shipper {shipper_exit}, billing {billing_exit}",
        f"timeline: crash loop done at {loop_done:.1f} s, all billed at {settled:.1f} s, "
        f"audited at {audited:.1f} s",
    ]
    result = ScenarioResult("1 shipper crash loop", report, made, elapsed(), notes)
    check_writers(result, results)
    check_publish_mode(result, shipper.log_text(), batch_publish)
    result.check(made >= kills, f"only {made} SIGKILLs, {kills} asked for")
    check_clean_stops(result, shipper_exit, billing_exit)
    return result


def scenario_billing_crash_loop(
    root: Path,
    *,
    events: int = 15_000,
    writers: int = 2,
    kills: int = 10,
    write_seconds: float = 8.0,
    seed: int | None = None,
    binary: str | None = None,
) -> ScenarioResult:
    """Scenario 5: the billing consumer is SIGKILLed ``kills`` times at random moments
    (before, during and after its batch commits) while events flow."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    with timed() as elapsed, staged(root, binary=binary) as (ws, nats):
        shipper = ws.shipper(nats.url)
        billing = ws.billing(nats.url, ack_wait=2.0, batch_size=256)
        per_writer = events // writers
        group = ws.writers(writers, events=per_writer, rate=per_writer / write_seconds)
        made = crash_loop(
            billing,
            kills=kills,
            rng=rng,
            ready=lambda: "consuming" in billing.log_since_start(),
            delay=(0.0, 1.0),
        )
        loop_done = elapsed()
        results = group.wait(60)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        settled = elapsed()
        deliveries, stream_seq = consumer_deliveries(nats.url)
        shipper_exit = shipper.stop()
        billing_exit = billing.stop()
        report = ws.audit(nats.url)
        audited = elapsed()
    notes = [
        f"seed {seed}; {writers} writer processes, {per_writer} events each",
        f"writers: {written} committed, {sum(r.errors for r in results)} errors",
        f"billing SIGKILLed {made} times and restarted each time; the durable consumer "
        f"made {deliveries} deliveries for {stream_seq} stream messages "
        f"({deliveries - stream_seq} redeliveries)",
        f"exit codes after SIGTERM: shipper {shipper_exit}, billing {billing_exit}",
        f"timeline: crash loop done at {loop_done:.1f} s, all billed at {settled:.1f} s, "
        f"audited at {audited:.1f} s",
    ]
    result = ScenarioResult("5 billing consumer crash loop", report, made, elapsed(), notes)
    check_writers(result, results)
    result.check(made >= kills, f"only {made} SIGKILLs, {kills} asked for")
    check_clean_stops(result, shipper_exit, billing_exit)
    return result
