"""Scenario 10 (issue 14): four billing processes on one durable consumer, on PostgreSQL,
one of them SIGKILLed at random every few seconds.

Writer processes record events while the shipper ships them; four ``python -m billing run``
processes share the durable consumer ``billing`` and one PostgreSQL database. Every
second or so one of them, chosen at random, is SIGKILLed (before, during or after a
batch's commit) and restarted. Meanwhile part of the stream is published a second time
under fresh message ids (what a shipper down longer than the de-duplication window, or an
outbox restored from a backup, stores), so billing sees redeliveries of both kinds: the
server's, of what a killed process held unacknowledged, and copies of events in the
stream. Overlapping batches of the four processes touch the same users all the time.

The audit: every written event billed exactly once, the charges equal to the priced sum
of what was written, every balance equal to the sum of its ledger, no deadlock (a
deadlock would show as retries and end as rejected events, which the audit counts).
The CI size is below; ``python -m bench.soak --only 10`` runs it with 50,000 events.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench.faults.harness import staged
from bench.faults.helpers import billing_counters, consumer_deliveries
from bench.faults.procs import Proc
from bench.faults.results import ScenarioResult, check_clean_stops, check_writers, timed
from usage_demo.waiting import wait_until_sync


async def _usage_stream(nats_url: str) -> tuple[str, int] | None:
    """(name, messages) of the stream holding the usage events, once there is one."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream(timeout=5)
        try:
            name = await js.find_stream_name_by_subject("billing.usage.recorded.gpt-4")
        except NotFoundError:
            return None
        return name, int((await js.stream_info(name)).state.messages)
    finally:
        await client.close()


async def _replay(nats_url: str, stream: str, count: int) -> int:
    """Publish the stream's first ``count`` messages again under fresh message ids (the
    same payloads and other headers); return how many were stored."""
    client = await nats.connect(nats_url)
    stored = 0
    try:
        js = client.jetstream(timeout=10)
        sub = await js.pull_subscribe(
            "billing.usage.recorded.>",
            durable=None,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        copies: list[tuple[str, bytes, dict[str, str]]] = []
        while len(copies) < count:
            try:
                batch = await sub.fetch(min(500, count - len(copies)), timeout=5)
            except TimeoutError:
                break
            for message in batch:
                headers = dict(message.headers or {})
                headers["Nats-Msg-Id"] = f"{headers.get('Nats-Msg-Id', '')}:replayed"
                copies.append((message.subject, message.data, headers))
                await message.ack()
        await sub.unsubscribe()
        for subject, payload, headers in copies:
            ack = await js.publish(subject, payload, headers=headers)
            stored += not ack.duplicate
    finally:
        await client.close()
    return stored


def _consuming(proc: Proc) -> Callable[[], bool]:
    return lambda: "consuming" in proc.log_since_start() or not proc.running


def scenario_billing_scale_out(
    root: Path,
    *,
    postgres_url: str,
    events: int = 8_000,
    writers: int = 2,
    consumers: int = 4,
    write_seconds: float = 8.0,
    kill_every: tuple[float, float] = (1.0, 3.0),
    kills: int = 6,
    replays: int = 1_000,
    seed: int | None = None,
    binary: str | None = None,
) -> ScenarioResult:
    """``consumers`` billing processes on one durable and one PostgreSQL database
    (``postgres_url``, fresh); one, at random, SIGKILLed and restarted every
    ``kill_every`` seconds while ``events`` are written, at least ``kills`` times;
    ``replays`` messages of the stream published again under fresh ids."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    with (
        timed() as elapsed,
        staged(root, binary=binary, billing_url=postgres_url) as (ws, nats_server),
    ):
        shipper = ws.shipper(nats_server.url)
        billing = [
            ws.billing(nats_server.url, name=f"billing-{n}", ack_wait=2.0) for n in range(consumers)
        ]
        per_writer = events // writers
        group = ws.writers(writers, events=per_writer, rate=per_writer / write_seconds)
        made = 0
        replayed = 0
        stream = ""  # found once the shipper created it and holds ``replays`` messages

        # Kills go on while the writers write, and until ``kills`` were made.
        while group.running or made < kills:
            time.sleep(rng.uniform(*kill_every))  # the fault schedule, not a sync
            victim = rng.choice(billing)
            if not victim.running:
                raise AssertionError(f"{victim.name} exited:\n{victim.log_text()[-3000:]}")
            victim.kill()
            made += 1
            victim.start()
            found = asyncio.run(_usage_stream(nats_server.url)) if not stream else None
            if found is not None and found[1] >= replays:
                stream = found[0]
                replayed = asyncio.run(_replay(nats_server.url, stream, replays))
        results = group.wait(60)
        written = sum(r.written for r in results)
        ws.wait_settled(written, timeout=120)
        for proc in billing:  # the last restarts must come up and stop cleanly
            wait_until_sync(_consuming(proc), 30, message=f"{proc.name} consuming", interval=0.05)
        settled = elapsed()
        found = asyncio.run(_usage_stream(nats_server.url))
        assert found is not None, "no stream was ever created"
        stream = found[0]
        deliveries, stream_seq = consumer_deliveries(nats_server.url, stream)
        shipper_exit = shipper.stop()
        billing_exits = [proc.stop() for proc in billing]
        report = ws.audit(nats_server.url, replays=replayed, stream=stream)
        audited = elapsed()
    counters: dict[str, int] = {}
    for proc in billing:
        for key, value in billing_counters(proc.log_text()).items():
            counters[key] = counters.get(key, 0) + value
    notes = [
        f"seed {seed}; {writers} writers, {per_writer} events each; {consumers} billing "
        f"processes on one durable, PostgreSQL",
        f"billing SIGKILLed {made} times (a random one of {consumers}), restarted each "
        f"time; {replayed} messages replayed under fresh ids; the durable made "
        f"{deliveries} deliveries for {stream_seq} stream messages",
        f"clean stops' counters (killed runs print none): {json.dumps(counters)}",
        f"exit codes after SIGTERM: shipper {shipper_exit}, billing {billing_exits}",
        f"timeline: all billed at {settled:.1f} s, audited at {audited:.1f} s",
    ]
    result = ScenarioResult("10 billing scale-out", report, made, elapsed(), notes)
    check_writers(result, results)
    result.check(made >= kills, f"only {made} SIGKILLs, {kills} asked for")
    result.check(not replays or replayed == replays, f"{replayed} of {replays} replays stored")
    check_clean_stops(result, shipper_exit, *billing_exits)
    result.check(report.stream_messages == written + replayed, "stream holds what was sent")
    return result
