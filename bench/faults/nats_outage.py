"""Scenarios 2 and 3 of issue 5: NATS stopped for a while, and NATS frozen (SIGSTOP).

2. The server is stopped while writer processes keep writing: the writers see no error
   and their write latency does not change (p50, and the p99 of a typical second, before
   and during; printed), and everything ships once the server is back. The issue asks
   for 30 s; the CI form stops it for 8 s and says so; ``python -m bench.soak`` runs 30 s
   and more.
3. The server is frozen (SIGSTOP) for longer than the shipper's publish timeout, then
   resumed (SIGCONT). Publishes that timed out were in fact stored once the server ran
   again; the shipper's retries of them must come back as JetStream duplicates, never as
   second copies in the stream.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from bench.faults.harness import staged
from bench.faults.helpers import count_lines
from bench.faults.results import (
    ScenarioResult,
    check_clean_stops,
    check_publish_mode,
    check_writers,
    percentile,
    timed,
)
from bench.faults.writer import WriterResult
from usage_demo.waiting import wait_until_sync

#: The issue's outage is 30 s; CI uses this and prints that it did.
CI_OUTAGE_SECONDS = 8.0


def _latencies(
    results: Sequence[WriterResult], api: str | None, start: float, end: float
) -> list[tuple[float, float]]:
    """(wall time, seconds) of each write of ``api`` (None: all) that began in [start, end)."""
    return [
        (stamp, seconds)
        for r in results
        if api is None or r.api == api
        for stamp, seconds in r.latencies
        if start <= stamp < end
    ]


#: The p99 compared is that of a typical second: the median over one-second slices.
SLICE_SECONDS = 1.0


def typical_percentile(
    writes: Sequence[tuple[float, float]], q: float, start: float, slice_seconds: float
) -> float:
    """The median over ``slice_seconds`` slices of each slice's ``q``-th percentile.

    Why not the window's own p99: one stall of the whole machine (a 2-core box running
    pytest, 4 writer processes, the shipper, billing and nats-server) holds up every
    caller in flight at once, and that alone sets the p99 of a few thousand writes; the
    CI once saw 234 ms before and 949 ms during an outage from such a stall, while the p50
    stayed put. What this check is for, a shipper that slows writers while NATS is down,
    would slow most seconds of the outage, and the median of the slices still shows it.
    """
    slices: dict[int, list[float]] = {}
    for stamp, seconds in writes:
        slices.setdefault(int((stamp - start) // slice_seconds), []).append(seconds)
    return statistics.median(percentile(values, q) for values in slices.values())


def _bound(before: float) -> float:
    """How slow a percentile may get during the outage: 3x, or 20 ms more, whichever is
    more generous (a percentile of a few ms moves by more than 3x on a busy 2-core machine)."""
    return max(3 * before, before + 0.020)


def scenario_nats_outage(
    root: Path,
    *,
    outage: float = CI_OUTAGE_SECONDS,
    before: float = 4.0,
    after: float = 2.0,
    writers: int = 4,
    rate: float = 150.0,
    crash: bool = False,
    binary: str | None = None,
    batch_publish: bool = True,
) -> ScenarioResult:
    """Scenario 2: stop NATS for ``outage`` s while ``writers`` processes (half through
    ``Outbox``, half through ``record_usage`` in a session) write ``rate`` events/s each.
    ``crash``: SIGKILL the server instead of stopping it (no clean shutdown)."""
    with timed() as elapsed, staged(root, binary=binary) as (ws, nats):
        shipper = ws.shipper(nats.url, batch_publish=batch_publish)
        billing = ws.billing(nats.url)
        warm_up = 3.0  # process start-up; excluded from the latency windows
        per_writer = int(rate * (warm_up + before + outage + after))
        group = ws.writers(
            writers, events=per_writer, rate=rate, api=["outbox", "session"], concurrency=4
        )
        wait_until_sync(lambda: ws.billed() > 0, 30, message="first events billed", interval=0.05)
        # The fault schedule: a stretch of normal traffic, then the outage itself.
        measure_from = time.time()
        time.sleep(before)
        stopped_at = time.time()
        if crash:
            nats.kill()
        else:
            nats.stop()
        time.sleep(outage)
        backlog = ws.pending()
        restarted_at = time.time()
        nats.start()
        back = elapsed()
        results = group.wait(outage + 120)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        settled = elapsed()
        shipper_exit = shipper.stop()
        billing_exit = billing.stop()
        report = ws.audit(nats.url)
    name = "2 NATS outage" + (" (SIGKILL)" if crash else "")
    result = ScenarioResult(name, report, 1, elapsed())
    result.notes += [
        f"NATS {'SIGKILLed' if crash else 'stopped'} for {outage:.0f} s"
        + (" (the issue's 30 s, shortened for CI; the soak runs 30 s+)" if outage < 30 else ""),
        f"{writers} writer processes at {rate:.0f} events/s each; "
        f"{written} committed; {backlog} rows waiting in the outbox when NATS came back",
        f"everything shipped and billed {settled - back:.1f} s after NATS was back; "
        f"shipper/billing exit codes {shipper_exit}/{billing_exit}",
    ]
    check_writers(result, results)
    check_publish_mode(result, shipper.log_text(), batch_publish)
    result.check(backlog > 0, "nothing piled up during the outage: was NATS really down?")
    check_clean_stops(result, shipper_exit, billing_exit)
    for api in ("outbox", "session", None):
        before_writes = _latencies(results, api, measure_from, stopped_at)
        during_writes = _latencies(results, api, stopped_at, restarted_at)
        name = api or "all"
        if not before_writes or not during_writes:
            result.check(False, f"{name}: no writes measured before or during the outage")
            continue
        before_ms = [seconds for _, seconds in before_writes]
        during_ms = [seconds for _, seconds in during_writes]
        b50, d50 = percentile(before_ms, 50), percentile(during_ms, 50)
        b99 = typical_percentile(before_writes, 99, measure_from, SLICE_SECONDS)
        d99 = typical_percentile(during_writes, 99, stopped_at, SLICE_SECONDS)
        result.notes.append(
            f"write latency ({name}): before p50 {b50 * 1e3:.2f} ms p99 of a typical second "
            f"{b99 * 1e3:.2f} ms (whole window {percentile(before_ms, 99) * 1e3:.2f} ms, "
            f"{len(before_ms)} writes); during p50 {d50 * 1e3:.2f} ms p99 of a typical "
            f"second {d99 * 1e3:.2f} ms (whole window {percentile(during_ms, 99) * 1e3:.2f} "
            f"ms, slowest {max(during_ms) * 1e3:.0f} ms, {len(during_ms)} writes); "
            f"bounds {_bound(b50) * 1e3:.2f} / {_bound(b99) * 1e3:.2f} ms"
        )
        for label, b, d in (("p50", b50, d50), ("p99 of a typical second", b99, d99)):
            result.check(
                d <= _bound(b),
                f"{name}: {label} during the outage {d * 1e3:.2f} ms is over the bound "
                f"{_bound(b) * 1e3:.2f} ms (before {b * 1e3:.2f} ms)",
            )
    return result


_STATS = re.compile(r"stopped after [\d.]+ s: (\d+) published, (\d+) duplicates")


def scenario_nats_freeze(
    root: Path,
    *,
    freezes: int = 3,
    freeze: float = 2.5,
    publish_timeout: float = 1.0,
    writers: int = 2,
    rate: float = 300.0,
    seed: int | None = None,
    binary: str | None = None,
    batch_publish: bool = True,
) -> ScenarioResult:
    """Scenario 3: SIGSTOP NATS ``freezes`` times for ``freeze`` s (longer than the
    shipper's ``publish_timeout``), SIGCONT after each, while events keep coming."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    with timed() as elapsed, staged(root, binary=binary) as (ws, nats):
        shipper = ws.shipper(nats.url, publish_timeout=publish_timeout, batch_publish=batch_publish)
        billing = ws.billing(nats.url)
        gap = (0.5, 1.5)
        span = 3.0 + freezes * (freeze + gap[1]) + 1.0
        group = ws.writers(writers, events=int(rate * span), rate=rate)
        wait_until_sync(lambda: ws.billed() > 0, 30, message="first events billed", interval=0.05)
        for _ in range(freezes):
            time.sleep(rng.uniform(*gap))  # the fault schedule
            nats.freeze()
            time.sleep(freeze)
            nats.thaw()
        results = group.wait(120)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        shipper_exit = shipper.stop()
        billing_exit = billing.stop()
        report = ws.audit(nats.url)
    log = shipper.log_text()
    timeouts = count_lines(log, r"backing off: no PubAck")
    stats = _STATS.search(log)
    published, duplicates = (int(stats[1]), int(stats[2])) if stats else (0, 0)
    result = ScenarioResult("3 NATS freeze", report, freezes, elapsed())
    result.notes += [
        f"seed {seed}; NATS frozen (SIGSTOP) {freezes} times for {freeze} s each, "
        f"publish timeout {publish_timeout} s",
        f"{writers} writer processes, {written} events committed",
        f"shipper: {timeouts} periods of publishes timing out; "
        f"{published} new messages stored, {duplicates} retries answered as duplicates "
        "(timed out, yet stored)",
        f"shipper/billing exit codes {shipper_exit}/{billing_exit}",
    ]
    check_writers(result, results)
    check_publish_mode(result, log, batch_publish)
    result.check(timeouts > 0, "no publish timed out: the freeze did not take effect")
    result.check(stats is not None, "the shipper did not log its final counters")
    result.check(duplicates > 0, "no retry came back as a duplicate")
    check_clean_stops(result, shipper_exit, billing_exit)
    return result
