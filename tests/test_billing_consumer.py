"""The billing consumer against a real nats-server with JetStream and real databases.

Each event is billed exactly once whatever the broker does: stored twice, redelivered,
redelivered after a crash between commit and ack. Bad messages are kept with a reason
and never block the good ones.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

import usage_runtime.wire
from billing import jetstream as billing_js
from billing.config import BillingConfig
from billing.database import BillingDatabase
from billing.engines import create_billing_engine
from billing.errors import BillingConfigError
from billing.items import Item, Outcome
from billing.schema import billing_records, rejected_events, wallet_transactions, wallets
from billing.testing import BeforeSettling
from outbox.contract import UsageEvent
from outbox.stream_spec import DEFAULT_STREAM
from tests.fixtures.billing import ConfigFactory, ConsumerFactory, publish, publish_raw, usage_event
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until

PRICE = Decimal("0.00003")  # per token: every charge below is exact at 9 places
USERS = ("alice", "bob", "carol", "dave")
PRODUCTS = ("gpt-4", "gpt-4.1", "meta-llama/Llama-3.1-8B")  # dots and slashes in names


def _events(count: int) -> list[UsageEvent]:
    return [
        usage_event(USERS[i % len(USERS)], PRODUCTS[i % len(PRODUCTS)], input_tokens=10 * i + 1)
        for i in range(count)
    ]


def _expected_charges(events: Sequence[UsageEvent]) -> dict[str, Decimal]:
    """Per user, worked out independently of billing: tokens x price."""
    expected: dict[str, Decimal] = {}
    for i, _event in enumerate(events):
        user = USERS[i % len(USERS)]
        expected[user] = expected.get(user, Decimal(0)) + (10 * i + 1) * PRICE
    return expected


async def _set_prices(config: BillingConfig) -> None:
    async with BillingDatabase(config.database_url) as db:
        for product in PRODUCTS:
            await db.set_price(product, "token", PRICE)


async def _ledger(url: str) -> tuple[int, int, dict[str, Decimal], dict[str, Decimal]]:
    """Rows in billing_records and wallet_transactions, debits and balances per user,
    read straight from the tables."""
    engine = create_billing_engine(url)
    try:
        async with engine.connect() as conn:
            records = await conn.scalar(sa.select(sa.func.count()).select_from(billing_records))
            debits = dict(
                (
                    await conn.execute(
                        sa.select(
                            wallet_transactions.c.user_id, sa.func.sum(wallet_transactions.c.amount)
                        ).group_by(wallet_transactions.c.user_id)
                    )
                ).all()
            )
            count = await conn.scalar(sa.select(sa.func.count()).select_from(wallet_transactions))
            balances = dict(
                (await conn.execute(sa.select(wallets.c.user_id, wallets.c.balance))).all()
            )
    finally:
        await engine.dispose()
    return int(records or 0), int(count or 0), debits, balances


async def _assert_billed_once(config: BillingConfig, events: Sequence[UsageEvent]) -> None:
    records, transactions, debits, balances = await _ledger(config.database_url)
    assert records == len(events)
    assert transactions == len(events), "one debit per event, never two"
    expected = _expected_charges(events)
    assert {user: -amount for user, amount in debits.items()} == expected
    assert balances == debits, "each wallet balance is the sum of its debits"
    async with BillingDatabase(config.database_url, run_migrations=False) as db:
        audit = await db.audit()
        report = await db.report()
        states = await db.event_states()
    assert audit.ok, audit.problems
    assert set(states) == {e.event_id for e in events}
    assert report.total_charged == sum(expected.values())
    assert report.total_balance == -report.total_charged


async def _consumer_state(
    js: JetStreamContext, config: BillingConfig, *, expect: tuple[int, int] | None = (0, 0)
) -> tuple[int, int]:
    """(pending, ack pending) of the durable consumer, once it reads ``expect`` or after
    5 s. Acks and AckTerms are fire-and-forget publishes: the server may count one a
    moment after the client sent it, so a single read right after a step can race."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        info = await js.consumer_info(config.stream, config.durable)
        state = (info.num_pending, info.num_ack_pending)
        if expect is None or state == expect or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.05)


# -- duplicates -----------------------------------------------------------------------------


async def _each_event_twice_and_redelivered(
    jetstream_ctx: JetStreamContext, config: BillingConfig, make: ConsumerFactory
) -> None:
    await _set_prices(config)
    await billing_js.ensure_stream(jetstream_ctx, config)
    events = _events(40)
    for event in events:
        await publish(jetstream_ctx, event)
        # The same event stored a second time, as after a shipper outage longer than the
        # de-duplication window: a different message id, so JetStream keeps both.
        await publish(jetstream_ctx, event, msg_id=f"{event.event_id}:again")

    async def nak_first_delivery(messages: Sequence[Msg], _outcomes: Sequence[Outcome]) -> None:
        # Committed, then not acknowledged: the server redelivers every message once more.
        for message in messages:
            if message.metadata.num_delivered == 1:
                await message.nak()

    consumer = make(config, settler=BeforeSettling(nak_first_delivery))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        # 80 stored messages, each delivered twice.
        await wait_until(
            lambda: consumer.stats.received >= 160, message=f"160 deliveries: {consumer!r}"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert consumer.stats.billed == 40
    assert consumer.stats.duplicates == 120
    assert consumer.stats.rejected == consumer.stats.retried == consumer.stats.unpriced == 0
    assert "billed=40" in repr(consumer) and "duplicates=120" in repr(consumer)
    await _assert_billed_once(config, events)
    # Everything was acknowledged in the end: nothing waits, nothing is in flight.
    assert await _consumer_state(jetstream_ctx, config) == (0, 0)


async def test_each_event_stored_twice_and_redelivered_is_charged_once(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    await _each_event_twice_and_redelivered(jetstream, billing_config(), make_consumer)


async def test_on_postgresql_each_event_is_charged_once(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    postgres_url: sa.URL,
) -> None:
    config = billing_config(database_url=postgres_url.render_as_string(hide_password=False))
    await _each_event_twice_and_redelivered(jetstream, config, make_consumer)


async def _stored_twice(
    jetstream: JetStreamContext, config: BillingConfig, count: int
) -> list[UsageEvent]:
    """Prices set, the stream made, and ``count`` events each stored twice (two ids)."""
    await _set_prices(config)
    await billing_js.ensure_stream(jetstream, config)
    events = _events(count)
    for event in events:
        await publish(jetstream, event)
        await publish(jetstream, event, msg_id=f"{event.event_id}:again")
    return events


async def test_two_consumers_racing_on_postgresql_charge_once(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    postgres_url: sa.URL,
) -> None:
    # Two instances share the durable; each event is stored twice, so copies of one event
    # can be in both instances' batches at once. The inbox's unique key settles the race.
    config = billing_config(
        database_url=postgres_url.render_as_string(hide_password=False), batch_size=16
    )
    events = await _stored_twice(jetstream, config, 120)
    first, second = make_consumer(config), make_consumer(config)
    await first.start()
    await second.start()
    await asyncio.gather(first.drain(0.5), second.drain(0.5))
    assert first.stats.received and second.stats.received, "both instances took work"
    assert first.stats.received + second.stats.received == 240
    assert first.stats.billed + second.stats.billed == 120
    assert first.stats.duplicates + second.stats.duplicates == 120
    await _assert_billed_once(config, events)


async def test_parallel_batches_on_postgresql_share_wallets_and_charge_once(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    postgres_url: sa.URL,
) -> None:
    # Four lanes, small batches, few users: batches in flight together touch the same
    # wallets (and copies of one event), which must neither deadlock nor lose an update.
    config = billing_config(
        database_url=postgres_url.render_as_string(hide_password=False),
        batch_size=8,
        parallel_batches=4,
    )
    assert config.batches_in_flight == 4
    events = await _stored_twice(jetstream, config, 200)
    in_flight = most = 0

    async def count(_messages: Sequence[Msg], _outcomes: Sequence[Outcome]) -> None:
        # Called once per committed batch: how many other lanes have a batch in hand now.
        nonlocal most
        most = max(most, in_flight)

    consumer = make_consumer(config, settler=BeforeSettling(count))
    real_process = consumer.process

    async def counted(messages: Sequence[Msg], items: Sequence[Item] | None = None) -> Any:
        nonlocal in_flight
        in_flight += 1
        try:
            return await real_process(messages, items)
        finally:
            in_flight -= 1

    consumer.process = counted  # type: ignore[method-assign]
    await consumer.drain(0.5)
    assert most >= 2, "batches were applied one at a time"
    assert (consumer.stats.billed, consumer.stats.duplicates) == (200, 200)
    await _assert_billed_once(config, events)


@pytest.mark.parametrize("lanes", [1, 4])
async def test_a_drain_goes_on_while_the_server_holds_back_for_acknowledgements(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    lanes: int,
) -> None:
    # max_ack_pending = one batch: the next batch's fetch (the prefetch, or another
    # lane's) is asked for while the server already has all it allows unacknowledged.
    # That must not read as "nothing left" and end a --burst drain early.
    config = billing_config(batch_size=8, max_ack_pending=8, parallel_batches=lanes)
    await billing_js.ensure_stream(jetstream, config)
    for i in range(200):
        await publish(jetstream, usage_event(f"u{i % 3}", "gpt-4", input_tokens=i + 1))
    consumer = make_consumer(config)
    await consumer.drain(0.5)
    assert consumer.stats.received == 200


async def test_a_drain_with_several_lanes_ends_after_one_idle_wait(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    # Each lane fetched in turn and waited the idle timeout for nothing: with 4 lanes a
    # --burst run took 4x the idle timeout to exit.
    config = billing_config(parallel_batches=4)
    await billing_js.ensure_stream(jetstream, config)
    await publish(jetstream, usage_event("alice", "gpt-4", input_tokens=1))
    consumer = make_consumer(config)
    await consumer.start()
    started = time.monotonic()
    await consumer.drain(1.0)
    assert consumer.stats.received == 1
    assert time.monotonic() - started < 2.5, "one idle wait (1 s), not one per lane (4 s)"


def test_batches_in_flight_follow_the_database_unless_set() -> None:
    postgres = "postgresql+psycopg://u@h/db"
    assert BillingConfig(database_url=postgres).batches_in_flight == 3
    assert BillingConfig(database_url="sqlite:///b.db").batches_in_flight == 1
    assert BillingConfig(database_url=postgres, parallel_batches=1).batches_in_flight == 1
    with pytest.raises(
        BillingConfigError, match=re.escape("parallel batches 17: 0 (by database) to 16")
    ):
        BillingConfig(parallel_batches=17).validate()


# -- crash between commit and ack -----------------------------------------------------------

_CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, os, signal, sys

    from billing.config import BillingConfig
    from billing.consumer import BillingConsumer
    from billing.testing import BeforeSettling


    async def crash(messages, outcomes):
        # The batch is committed; die before a single ack leaves the process.
        os.kill(os.getpid(), signal.SIGKILL)


    async def main():
        config = BillingConfig(
            database_url=sys.argv[1], nats_url=sys.argv[2], ack_wait=2.0, fetch_timeout=0.5
        )
        await BillingConsumer(config, settler=BeforeSettling(crash)).drain(10)


    asyncio.run(main())
    """
)


async def test_a_crash_between_commit_and_ack_changes_nothing_on_redelivery(
    jetstream: JetStreamContext,
    nats_url: str,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
) -> None:
    config = billing_config(ack_wait=2.0)
    await _set_prices(config)
    await billing_js.ensure_stream(jetstream, config)
    events = _events(30)
    for event in events:
        await publish(jetstream, event)

    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASHING_CONSUMER, config.database_url, nats_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    committed, transactions, _, _ = await _ledger(config.database_url)
    assert committed >= 1, "the crashed consumer committed its batch"
    assert transactions == committed
    # Not acknowledged: the server still counts those messages as in flight.
    assert (await _consumer_state(jetstream, config, expect=None))[1] == committed

    consumer = make_consumer(config)
    await consumer.start()
    # The server redelivers the committed-but-unacked messages once ack_wait runs out.
    async with asyncio.timeout(20):
        while consumer.stats.received < len(events):
            await consumer.step(0.5)
    assert consumer.stats.duplicates == committed, "the redelivered events changed nothing"
    assert consumer.stats.billed == len(events) - committed
    await _assert_billed_once(config, events)
    assert await _consumer_state(jetstream, config) == (0, 0)


# -- what cannot be billed ------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_unpriced_malformed_and_contract_breaking_messages_are_kept_with_reasons(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    # Both databases: each takes the rows (the raw payload bytes among them) its own way.
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
        config = billing_config(database_url=url)
    else:
        config = billing_config()
    await _set_prices(config)
    await billing_js.ensure_stream(jetstream, config)
    first = usage_event("alice", "gpt-4", input_tokens=1000)
    unpriced = usage_event("bob", "flux.1-schnell", input_units=4)  # no price for it
    breaking = usage_event("carol", "gpt-4", input_tokens=5)
    breaking_payload = breaking.payload.replace(b'"unit_type":"token"', b'"unit_type":"tokens"')
    last = usage_event("dave", "gpt-4.1", input_tokens=2000)
    await publish(jetstream, first)
    await publish(jetstream, unpriced)
    bad_json_seq = await publish_raw(jetstream, "billing.usage.recorded.gpt-4", b"{oops", "m-1")
    breaking_seq = await publish_raw(jetstream, breaking.subject, breaking_payload, "m-2")
    await publish(jetstream, last)

    consumer = make_consumer(config)
    await consumer.drain(0.5)
    assert (consumer.stats.billed, consumer.stats.unpriced, consumer.stats.rejected) == (2, 1, 2)
    # AckTerm: nothing pending, nothing in flight, and nothing comes back.
    assert await _consumer_state(jetstream, config) == (0, 0)
    await consumer.drain(0.3)
    assert consumer.stats.received == 5

    engine = create_billing_engine(config.database_url)
    try:
        async with engine.connect() as conn:
            kept = {row.stream_seq: row for row in await conn.execute(sa.select(rejected_events))}
            unpriced_row = (
                await conn.execute(
                    sa.select(billing_records).where(
                        billing_records.c.event_id == unpriced.event_id
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert set(kept) == {bad_json_seq, breaking_seq}
    assert kept[bad_json_seq].payload == b"{oops"
    assert "not valid JSON" in kept[bad_json_seq].reason
    assert kept[breaking_seq].payload == breaking_payload, "the raw bytes, untouched"
    assert "unit_type" in kept[breaking_seq].reason
    assert kept[breaking_seq].event_id == breaking.event_id
    assert kept[breaking_seq].subject == breaking.subject
    # The unpriced event is recorded and visible, not charged, not debited.
    assert unpriced_row.state == "unpriced"
    assert unpriced_row.charge is None
    assert unpriced_row.usage_amount == Decimal(4)
    assert unpriced_row.unit_type == "request"

    async with BillingDatabase(config.database_url) as db:
        report = await db.report()
        assert (report.billed_events, report.unpriced_events, report.rejected_events) == (2, 1, 2)
        assert [(p.product_id, p.unit_type, p.events) for p in report.unpriced_products] == [
            ("flux.1-schnell", "request", 1)
        ]
        assert report.user("bob") is not None
        assert report.user("bob").balance == 0  # type: ignore[union-attr]
        assert report.total_charged == 3000 * PRICE
        # Once a price exists, the kept event can be billed like any other.
        await db.set_price("flux.1-schnell", "request", "0.04")
        assert await db.reprice() == 1
        assert await db.reprice() == 0, "repricing is idempotent"
        report = await db.report()
        assert report.user("bob").balance == Decimal("-0.16")  # type: ignore[union-attr]
        assert report.unpriced_events == 0
        assert (await db.audit()).ok


@pytest.mark.parametrize("frames", [True, False], ids=["ack-frames", "nats-py-publish"])
async def test_acks_and_terms_reach_the_server_on_both_settling_paths(
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
    monkeypatch: pytest.MonkeyPatch,
    frames: bool,
) -> None:
    # The settler writes acks and terms as frames to nats-py's private buffer, and falls
    # back to one publish each when this nats-py lacks it (usage_runtime.wire).
    if not frames:
        monkeypatch.setattr(usage_runtime.wire, "has_private_api", lambda _client: False)
    config = billing_config()
    await _set_prices(config)
    await billing_js.ensure_stream(jetstream, config)
    events = _events(3)
    for event in events:
        await publish(jetstream, event)
    await publish_raw(jetstream, "billing.usage.recorded.gpt-4", b"{oops", "m-bad")
    consumer = make_consumer(config)
    await consumer.drain(0.5)
    assert (consumer.stats.billed, consumer.stats.rejected) == (3, 1)
    # Acked and terminated: nothing pending, nothing in flight, nothing redelivered.
    assert await _consumer_state(jetstream, config) == (0, 0)
    await consumer.drain(0.3)
    assert consumer.stats.received == 4


async def test_a_message_the_database_refuses_does_not_hold_back_the_others(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    # A real database failure for one event only: a trigger that aborts its insert.
    config = billing_config(max_deliveries=2, retry_delay=0.1)
    async with BillingDatabase(config.database_url) as db:
        for product in PRODUCTS:
            await db.set_price(product, "token", PRICE)
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON billing_records "
                "WHEN NEW.user_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            )
    await billing_js.ensure_stream(jetstream, config)
    good = [usage_event("alice", "gpt-4", input_tokens=10), usage_event("bob", "gpt-4")]
    bad = usage_event("poison", "gpt-4")
    await publish(jetstream, good[0])
    bad_seq = await publish(jetstream, bad)
    await publish(jetstream, good[1])

    consumer = make_consumer(config)
    await consumer.start()
    async with asyncio.timeout(15):
        while consumer.stats.rejected < 1:
            await consumer.step(0.5)
    # First delivery: the batch failed, was retried one by one; the good ones billed, the
    # bad one nak-ed. Second delivery (= max_deliveries): parked in rejected_events.
    assert consumer.stats.billed == 2
    assert consumer.stats.retried == 1
    assert consumer.stats.rejected == 1
    assert await _consumer_state(jetstream, config) == (0, 0)
    async with BillingDatabase(config.database_url) as db:
        (parked,) = await db.rejected()
        assert set(await db.event_states()) == {e.event_id for e in good}
    assert parked.stream_seq == bad_seq
    assert parked.event_id == bad.event_id
    assert parked.deliveries == 2
    assert "not stored after 2 deliveries" in parked.reason
    assert "poisoned row" in parked.reason
    assert parked.payload == bad.payload


# -- the stream -----------------------------------------------------------------------------


async def test_the_consumer_can_start_first_and_creates_the_stream(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    config = billing_config(stream="BILLS", durable="billing-eu", max_ack_pending=300)
    consumer = make_consumer(config)
    await consumer.start()
    info = await jetstream.stream_info("BILLS")
    # The stream the platform's billing service expects: everything under billing., kept
    # for a time, never bounded by count (a count limit discards unread usage).
    assert info.config.subjects == ["billing.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.max_age == 30 * 24 * 3600
    assert info.config.max_msgs in (None, -1)
    durable = await jetstream.consumer_info("BILLS", "billing-eu")
    assert durable.config.ack_policy == "explicit"
    assert durable.config.max_ack_pending == 300
    assert durable.config.ack_wait == config.ack_wait
    assert durable.config.filter_subject == "billing.usage.recorded.>"
    event = usage_event()
    await publish(jetstream, event)
    await consumer.drain(0.3)
    assert consumer.stats.unpriced == 1


async def test_an_existing_stream_capturing_the_subjects_is_adopted(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    await jetstream.add_stream(
        StreamConfig(name="OPS", subjects=["billing.usage.recorded.>"], storage=StorageType.FILE)
    )
    consumer = make_consumer(billing_config())
    await consumer.start()
    assert consumer.stream == "OPS"
    await publish(jetstream, usage_event())
    await consumer.drain(0.3)
    assert consumer.stats.received == 1


async def test_without_stream_creation_the_consumer_waits_for_the_stream(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    config = billing_config(create_stream=False)
    consumer = make_consumer(config)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_until(lambda: consumer.state == "waiting_for_stream", message="waiting")
        assert not consumer.started
        with pytest.raises(NotFoundError):
            await jetstream.stream_info(DEFAULT_STREAM)  # it did not create one
        # The shipper creates it, as it does on its first start.
        await jetstream.add_stream(
            StreamConfig(name=DEFAULT_STREAM, subjects=["billing.usage.recorded.*"])
        )
        event = usage_event()
        await publish(jetstream, event)
        await wait_until(lambda: consumer.stats.unpriced == 1, message="the event recorded")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert task.result().unpriced == 1


async def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
) -> None:
    config = billing_config()
    await _set_prices(config)
    consumer = make_consumer(config)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    events = _events(20)
    try:
        await wait_until(lambda: consumer.started, message="consumer started")
        for event in events[:10]:
            await publish(jetstream, event)
        await wait_until(lambda: consumer.stats.billed == 10, message="first half billed")
        nats_server.kill()  # SIGKILL: no clean shutdown
        nats_server.start()
        # The test's own client reconnects too; publish the second half once it can.
        for event in events[10:]:
            async with asyncio.timeout(15):
                while True:
                    try:
                        await publish(jetstream, event)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
        await wait_until(lambda: consumer.stats.billed == 20, message=f"all billed: {consumer!r}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    await _assert_billed_once(config, events)


async def test_stop_finishes_the_batch_in_hand_and_acknowledges_it(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    config = billing_config()
    await billing_js.ensure_stream(jetstream, config)
    stop = asyncio.Event()

    async def stop_mid_batch(_m: Sequence[Msg], _o: Sequence[Outcome]) -> None:
        stop.set()  # a SIGTERM arriving while a batch is being applied

    for event in _events(5):
        await publish(jetstream, event)
    consumer = make_consumer(config, settler=BeforeSettling(stop_mid_batch))
    stats = await asyncio.wait_for(consumer.run(stop), 10)
    assert stats.batches == 1
    assert stats.unpriced == 5
    assert not consumer.started
    assert await _consumer_state(jetstream, config) == (0, 0), "acked before closing"


async def test_stopped_while_waiting_for_the_stream_run_returns_cleanly(
    billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    consumer = make_consumer(billing_config(create_stream=False))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await wait_until(lambda: consumer.state == "waiting_for_stream", message="waiting")
    stop.set()
    stats = await asyncio.wait_for(task, 5)
    assert stats.received == 0
    assert consumer.state == "closed"


async def test_the_consumer_can_start_before_nats_and_connects_when_it_comes_up(
    tmp_path: Path, nats_server_binary: str, billing_url: str, make_consumer: ConsumerFactory
) -> None:
    with socket.socket() as sock:  # a port with nothing listening on it, yet
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = BillingConfig(
        database_url=billing_url, nats_url=f"nats://127.0.0.1:{port}", fetch_timeout=0.5
    )
    consumer = make_consumer(config)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    server = NatsServer(tmp_path / "late-nats", port=port, binary=nats_server_binary)
    try:
        await wait_until(lambda: consumer.state == "connecting", message="connecting")
        assert not task.done(), "an unreachable NATS is waited for, not fatal"
        await asyncio.to_thread(server.start)
        await wait_until(lambda: consumer.state == "consuming", message=f"consuming: {consumer!r}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await asyncio.to_thread(server.stop)
