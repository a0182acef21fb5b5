"""Usage events from the platform's other producers (the ``isa-common`` library's shape).

Written from the facts in ``shared/notes/real-ecosystem.md``, not from that library's code:
its ``UsageEvent`` sends ``schema_version``, the four required fields, unit types beyond
token and request, the top-level ids, an optional ``idempotency_key``, and by default an
``event_id`` of ``evt_<epoch seconds as a float>`` that two events of one instant share.
It publishes with core NATS (no ``Nats-Msg-Id``) on
``billing.usage.recorded.<source>[.<resource>]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from billing import jetstream as billing_js
from billing.database import BillingDatabase
from billing.decode import decode_usage_event
from billing.engines import create_billing_engine
from billing.errors import InvalidPayload
from billing.items import Outcome
from billing.schema import billing_records, rejected_events
from billing.testing import BeforeSettling
from tests.fixtures.billing import ConfigFactory, ConsumerFactory
from usage_demo.waiting import wait_until

STORED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def platform_event(**changes: Any) -> dict[str, Any]:
    """A usage event in the platform library's shape, as its JSON encoder writes it."""
    document: dict[str, Any] = {
        "event_id": "evt_1733047200.123456",
        "schema_version": "1.0",
        "user_id": "user-7",
        "organization_id": "org-1",
        "subscription_id": None,
        "product_id": "flux-pro",
        "usage_amount": 2.0,
        "unit_type": "image",
        "session_id": "sess-9",
        "request_id": "req-3",
        "agent_id": None,
        "idempotency_key": None,
        "usage_details": {"width": 1024},
        "timestamp": "2026-12-01T09:59:58.500000",  # datetime.isoformat() of a naive UTC time
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not _DROP}


_DROP = object()


def _bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


# -- decoding -----------------------------------------------------------------------------


def test_the_platform_shape_decodes_with_its_units_ids_and_a_naive_utc_time() -> None:
    record = decode_usage_event(_bytes(platform_event()), stored_at=STORED)
    assert (record.user_id, record.product_id, record.unit_type) == ("user-7", "flux-pro", "image")
    assert record.usage_amount == Decimal(2)
    assert record.timestamp == datetime(2026, 12, 1, 9, 59, 58, 500000, tzinfo=UTC)
    assert record.ids == {"organization_id": "org-1", "session_id": "sess-9", "request_id": "req-3"}
    assert record.usage_details == {"width": Decimal(1024)}
    # Its default id is not unique: the event is keyed by its delivery, never by that id.
    assert record.keyed_by_delivery
    assert record.event_id == "evt_1733047200.123456"


@pytest.mark.parametrize(
    ("changes", "by_delivery", "key"),
    [
        ({"idempotency_key": "isa-model:req-3"}, False, "isa-model:req-3"),
        ({"event_id": "0190e1a0-0000-7000-8000-00000000abcd"}, False, None),
        ({"event_id": _DROP}, True, None),
        ({"event_id": "evt_1733047200"}, True, None),
    ],
)
def test_only_a_key_that_can_be_unique_identifies_a_platform_event(
    changes: dict[str, Any], by_delivery: bool, key: str | None
) -> None:
    record = decode_usage_event(_bytes(platform_event(**changes)), stored_at=STORED)
    assert record.keyed_by_delivery is by_delivery
    if key is not None:
        assert record.key == key
    elif not by_delivery:
        assert record.key == changes["event_id"]


def test_a_platform_event_without_time_or_details_takes_the_stored_time() -> None:
    document = platform_event(timestamp=_DROP, usage_details=_DROP, unit_type="minute")
    document["usage_amount"] = 1.5
    record = decode_usage_event(_bytes(document), stored_at=STORED)
    assert record.timestamp == STORED
    assert record.usage_details == {}
    assert record.usage_amount == Decimal("1.5")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"unit_type": "litre"}, "unit_type: must be one of byte, character, execution"),
        ({"usage_amount": -1}, "usage_amount: must not be negative"),
        ({"user_id": ""}, "user_id: must not be empty"),
        ({"product_id": _DROP}, "missing required field(s): product_id"),
        ({"timestamp": "soon"}, "timestamp: 'soon' is not an ISO 8601 time"),
        ({"organization_id": 5}, "organization_id: must be a string, got number"),
        ({"usage_details": [1]}, "usage_details: must be an object, got array"),
    ],
)
def test_a_broken_platform_event_is_refused_with_the_reason(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode_usage_event(_bytes(platform_event(**changes)), stored_at=STORED)
    assert reason in caught.value.reason


def test_a_payload_of_neither_shape_names_the_contracts_missing_fields() -> None:
    with pytest.raises(InvalidPayload, match=r"missing required field\(s\): event_id, user_id"):
        decode_usage_event(b'{"product_id": "p", "usage_amount": 1, "unit_type": "image"}')


# -- through the consumer -----------------------------------------------------------------


async def _publish_core(nc: NatsClient, subject: str, document: dict[str, Any]) -> None:
    """As the platform library publishes: core NATS, no message id, no PubAck."""
    await nc.publish(subject, _bytes(document))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_platform_events_are_billed_per_unit_and_never_merged_by_their_default_id(
    backend: str,
    request: pytest.FixtureRequest,
    nats_client: NatsClient,
    jetstream: JetStreamContext,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
) -> None:
    config = billing_config()
    if backend == "postgresql":
        url: sa.URL = request.getfixturevalue("postgres_url")
        config = billing_config(database_url=url.render_as_string(hide_password=False))
    async with BillingDatabase(config.database_url) as db:
        await db.set_price("flux-pro", "image", "0.04")
        await db.set_price("whisper", "minute", "0.006")
    await billing_js.ensure_stream(jetstream, config)
    same_instant = "evt_1733047200.123456"
    keyed = platform_event(
        product_id="whisper",
        unit_type="minute",
        usage_amount=2.5,
        idempotency_key="isa-audio:job-1",
        event_id=_DROP,
    )
    events = [
        # Two different images in the same microsecond: the same default event_id.
        ("billing.usage.recorded.isa-model.flux-pro", platform_event(event_id=same_instant)),
        (
            "billing.usage.recorded.isa-model.flux-pro",
            platform_event(event_id=same_instant, usage_amount=3.0),
        ),
        # One event published twice with its idempotency key: billed once.
        ("billing.usage.recorded.isa-audio", keyed),
        ("billing.usage.recorded.isa-audio", keyed),
        ("billing.usage.recorded.isa-model", {"product_id": "flux-pro", "unit_type": "image"}),
    ]
    for subject, document in events:
        await _publish_core(nats_client, subject, document)
    await nats_client.flush()
    await wait_until(
        lambda: _stored(jetstream, config.stream, len(events)), message="all five stored"
    )

    async def nak_first_delivery(messages: Sequence[Msg], outcomes: Sequence[Outcome]) -> None:
        # Committed, not acknowledged: each recorded one comes back once more.
        for message, outcome in zip(messages, outcomes, strict=True):
            if message.metadata.num_delivered == 1 and outcome is not Outcome.REJECTED:
                await message.nak()

    consumer = make_consumer(config, settler=BeforeSettling(nak_first_delivery))
    await consumer.start()
    async with asyncio.timeout(20):
        while consumer.stats.received < 2 * len(events) - 1:
            await consumer.step(0.5)
    assert consumer.stats.billed == 3
    assert consumer.stats.rejected == 1
    # The second copy of the keyed event, then the redelivery of each of the four.
    assert consumer.stats.duplicates == 1 + 4

    async with BillingDatabase(config.database_url) as db:
        report = await db.report()
        assert (await db.audit()).ok
    assert report.user("user-7") is not None
    assert report.user("user-7").charged == Decimal("0.2") + Decimal("0.015")  # type: ignore[union-attr]
    engine = create_billing_engine(config.database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(billing_records).order_by(billing_records.c.stream_seq)
                )
            ).all()
            (rejected,) = (await conn.execute(sa.select(rejected_events))).all()
    finally:
        await engine.dispose()
    images = [row for row in rows if row.unit_type == "image"]
    assert [row.usage_amount for row in images] == [Decimal(2), Decimal(3)]
    assert {row.payload_event_id for row in images} == {same_instant}
    assert len({row.event_id for row in images}) == 2, "keyed by delivery, not by the id"
    assert all(row.event_id.startswith(f"delivery:{config.stream}:") for row in images)
    assert all(
        (row.organization_id, row.session_id, row.request_id) == ("org-1", "sess-9", "req-3")
        for row in rows
    )
    (minutes,) = [row for row in rows if row.unit_type == "minute"]
    assert minutes.idempotency_key == "isa-audio:job-1"
    assert minutes.charge == Decimal("0.015")
    assert "missing required field(s)" in rejected.reason


async def _stored(js: JetStreamContext, stream: str, count: int) -> bool:
    return int((await js.stream_info(stream)).state.messages) >= count
