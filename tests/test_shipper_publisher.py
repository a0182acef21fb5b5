"""Classifying PubAcks (real ones from nats-server), and per-row backoff in the loop."""

from __future__ import annotations

import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig

from shipper.publisher import Message, Outcome, Publisher, classify
from tests.fixtures.shipper import (
    ShipperRunner,
    outbox_rows,
    read_stream,
    shipper_config,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


async def _ack(nc: NatsClient, subject: str, headers: dict[str, str], data: bytes = b"{}") -> Msg:
    """The real reply JetStream (or the server) sends to a publish with a reply subject."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, data, reply=inbox, headers=headers)
    try:
        return await sub.next_msg(timeout=2)
    finally:
        await sub.unsubscribe()


@pytest.fixture
async def stream(jetstream: JetStreamContext) -> str:
    await jetstream.add_stream(
        StreamConfig(
            name="T",
            subjects=["t.>"],
            max_msg_size=100,
        )
    )
    await jetstream.add_stream(
        StreamConfig(name="FULL", subjects=["full.>"], max_msgs=1, discard=DiscardPolicy.NEW)
    )
    return "T"


async def test_classify_real_pubacks(nats_client: NatsClient, stream: str) -> None:
    stored = await _ack(nats_client, "t.a", {"Nats-Msg-Id": "one"})
    assert classify(stored).outcome is Outcome.STORED

    # The server writes `"duplicate": true` (with a space): it must still count as one.
    again = await _ack(nats_client, "t.a", {"Nats-Msg-Id": "one"})
    assert b"duplicate" in again.data
    assert classify(again).outcome is Outcome.DUPLICATE

    too_big = await _ack(nats_client, "t.b", {"Nats-Msg-Id": "two"}, b"x" * 200)
    result = classify(too_big)
    assert result.outcome is Outcome.REJECTED
    assert "400" in result.detail and "size" in result.detail

    wrong_stream = await _ack(
        nats_client, "t.c", {"Nats-Msg-Id": "three", "Nats-Expected-Stream": "OTHER"}
    )
    assert classify(wrong_stream).outcome is Outcome.REJECTED

    nobody = await _ack(nats_client, "nowhere.at.all", {"Nats-Msg-Id": "four"})
    assert classify(nobody).outcome is Outcome.UNREACHABLE

    await _ack(nats_client, "full.a", {"Nats-Msg-Id": "five"})
    full = await _ack(nats_client, "full.b", {"Nats-Msg-Id": "six"})
    assert classify(full).outcome is Outcome.UNREACHABLE  # 503: the stream, not the row
    assert "maximum messages" in classify(full).detail


def _reply(data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(_client=None, subject="_INBOX.x.1", data=data, headers=headers)  # type: ignore[arg-type]


def test_classify_answers_the_server_may_give() -> None:
    assert classify(None).outcome is Outcome.RETRY
    assert classify(_reply(b"", {"Status": "503"})).outcome is Outcome.UNREACHABLE
    assert classify(_reply(b"not json")).outcome is Outcome.RETRY
    assert classify(_reply(b'{"what":1}')).outcome is Outcome.RETRY
    assert classify(_reply(b'{"stream":"S","seq":7,"duplicate":true}')).outcome is Outcome.DUPLICATE
    in_process = b'{"error":{"code":400,"err_code":10158,"description":"in process"}}'
    assert classify(_reply(in_process)).outcome is Outcome.RETRY
    conflict = b'{"error":{"code":409,"err_code":10999,"description":"x"},"stream":"S","seq":0}'
    assert classify(_reply(conflict)).outcome is Outcome.RETRY


async def test_publisher_pipelines_a_batch_and_reports_each_row(
    nats_client: NatsClient, stream: str
) -> None:
    publisher = Publisher(nats_client, timeout=2, max_in_flight=3)
    await publisher.start()
    messages = [Message(f"t.{i}", b"{}", {"Nats-Msg-Id": f"m{i}"}) for i in range(7)]
    messages.insert(4, Message("t.big", b"x" * 500, {"Nats-Msg-Id": "big"}))
    results = await publisher.publish(messages)
    assert [r.outcome for r in results] == [Outcome.STORED] * 4 + [Outcome.REJECTED] + [
        Outcome.STORED
    ] * 3
    again = await publisher.publish(messages[:2])
    assert [r.outcome for r in again] == [Outcome.DUPLICATE] * 2
    await publisher.close()


# -- per-row backoff in the loop -----------------------------------------------------------

# The subject of one product is mapped away from the stream to a subject a silent
# subscriber holds: a real server where that one row never gets its PubAck.
_BLACKHOLE_CONFIG = 'mappings: { "billing.usage.recorded.blackhole": "void.blackhole" }\n'


@pytest.fixture
def blackhole_server(tmp_path: Path, nats_server_binary: str) -> NatsServer:
    server = NatsServer(
        tmp_path / "nats-bh", binary=nats_server_binary, config_text=_BLACKHOLE_CONFIG
    )
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


async def test_a_row_without_pubacks_backs_off_without_blocking_the_rows_behind_it(
    outbox_path: Path, blackhole_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    silent = await nats.connect(blackhole_server.url)
    await silent.subscribe("void.>")  # receives, never answers
    try:
        before = await write_events(outbox_path, 5)
        stuck = (await write_events(outbox_path, 1, product_id="blackhole"))[0]
        after = await write_events(outbox_path, 30)  # more than one batch behind it
        config = shipper_config(
            outbox_path,
            blackhole_server.url,
            exit_when_idle=False,
            batch_size=10,
            publish_timeout=1.0,
            retry_base=30.0,
            retry_cap=60.0,
        )
        started = time.time()
        shipper, _task = run_shipper.start(config)
        # (acked rows are deleted one step after their PubAck: wait for the table)
        await wait_until(lambda: len(outbox_rows(outbox_path)) == 1, message="others shipped")
        assert shipper.stats.published == 35
        rows = outbox_rows(outbox_path)
        assert [r["event_id"] for r in rows] == [stuck]
        (row,) = rows
        assert row["state"] == "pending"
        assert row["attempts"] == 1
        assert "PubAck" in row["last_error"]
        # exponential backoff with jitter: retry_base x [0.5, 1] for the first failure
        assert started + 15 <= row["next_attempt_at"] <= time.time() + 30
        assert shipper.stats.retried == 1
        stored = {m.headers["Nats-Msg-Id"] for m in await read_stream(blackhole_server.url)}
        assert stored == set(before + after)
    finally:
        await silent.close()
