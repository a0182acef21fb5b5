"""The happy path: events written through the outbox API reach the stream exactly as stored."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from outbox.contract import EVENT_TYPE
from tests.fixtures.shipper import (
    ShipperRunner,
    msg_ids,
    outbox_counts,
    outbox_rows,
    pending,
    read_stream,
    shipper_config,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


async def test_every_event_arrives_once_with_subject_headers_and_payload(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    ids = await write_events(outbox_path, 250, product_id="gpt-4")
    ids += await write_events(outbox_path, 200, product_id="claude-3.5-sonnet")
    stored = {row["event_id"]: row for row in outbox_rows(outbox_path)}
    assert len(stored) == 450

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url, batch_size=200))

    messages = await read_stream(nats_server.url)
    assert len(messages) == 450
    assert Counter(msg_ids(messages)) == Counter(ids)  # each id exactly once
    for message in messages:
        row = stored[message.headers["Nats-Msg-Id"]]
        assert message.subject == row["subject"]
        assert message.headers == {"event_type": EVENT_TYPE, "Nats-Msg-Id": row["event_id"]}
        assert message.data == row["payload"]  # byte for byte
        assert json.loads(message.data)["event_id"] == row["event_id"]
    subjects = Counter(m.subject for m in messages)
    assert subjects == {
        "billing.usage.recorded.gpt-4": 250,
        "billing.usage.recorded.claude-3%2E5-sonnet": 200,
    }
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}
    assert (stats.published, stats.duplicates, stats.dead, stats.retried) == (450, 0, 0, 0)
    assert stats.batches >= 3  # 450 rows in batches of 200


async def test_events_written_while_running_are_shipped_promptly(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    shipper, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False)
    )
    await wait_until(lambda: shipper.stats.connections == 1, message="shipper connected")
    for round_ in range(3):
        await write_events(outbox_path, 20)
        await wait_until(lambda: pending(outbox_path) == 0, 5, message=f"round {round_} shipped")
    assert shipper.stats.published == 60
    assert len(await read_stream(nats_server.url)) == 60
