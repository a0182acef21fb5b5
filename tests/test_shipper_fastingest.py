"""Fast-ingest batch publishing (ADR-50) against a real nats-server, and its fallback.

The per-message path is exercised by the rest of the suite on streams the tests create
without ``allow_batched``; the fault scenarios run on both paths (tests/faults).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.protocol import command

from outbox.contract import contract_headers
from outbox.stream_spec import DEFAULT_STREAM_SUBJECTS
from shipper import frames
from shipper.errors import TransientError
from shipper.fastingest import FastIngestPublisher, server_supports_batches
from shipper.publisher import Message, Outcome, Publisher
from tests.fixtures.shipper import (
    ShipperRunner,
    msg_ids,
    outbox_counts,
    read_stream,
    run_cli,
    shipper_config,
    shipper_env,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_runtime import wire

SUBJECT = "billing.usage.recorded.gpt-4"


def _messages(count: int, *, first: int = 0, big: frozenset[int] = frozenset()) -> list[Message]:
    return [
        Message(
            SUBJECT,
            (b"x" * 2_000) if i in big else b'{"n":%d}' % i,
            contract_headers(f"event-{first + i}"),
        )
        for i in range(count)
    ]


async def _stream(js: JetStreamContext, *, batched: bool, max_msg_size: int = -1) -> None:
    await js.add_stream(
        StreamConfig(
            name="FAST",
            subjects=list(DEFAULT_STREAM_SUBJECTS),
            storage=StorageType.FILE,
            allow_batched=batched,
            max_msg_size=max_msg_size,
        )
    )


async def _publisher(client: NatsClient) -> FastIngestPublisher:
    publisher = FastIngestPublisher(
        client, Publisher(client, timeout=2.0, max_in_flight=4000), timeout=2.0
    )
    await publisher.start()
    return publisher


# -- the private nats-py API the frames rely on ------------------------------------------


def test_nats_py_still_has_the_private_api_the_frames_use() -> None:
    """Fails loudly when a nats-py upgrade renames or drops what usage_runtime.wire calls:
    pin nats-py back (pyproject.toml) or adapt usage_runtime/wire.py."""
    client = NatsClient()
    missing = [name for name in wire.PRIVATE_API if not hasattr(client, name)]
    assert not missing, f"nats-py {nats.__version__} lacks {missing}: see usage_runtime/wire.py"
    assert wire.has_private_api(client)


def test_a_frame_is_byte_for_byte_what_nats_py_would_send() -> None:
    message = _messages(1)[0]
    header = bytearray(b"NATS/1.0\r\n")
    for name, value in message.headers.items():
        header.extend(f"{name}: {value}\r\n".encode())
    header.extend(b"\r\n")
    expected = command.hpub_cmd(message.subject, "_INBOX.x.1", bytes(header), message.payload)
    assert frames.hpub_frame(message, "_INBOX.x.1") == expected


async def test_frames_written_to_the_buffer_arrive_with_headers(nats_client: NatsClient) -> None:
    received: list[tuple[str, bytes, dict[str, str]]] = []
    sub = await nats_client.subscribe("billing.>")
    await wire.write_frames(nats_client, [frames.hpub_frame(m, "reply.to") for m in _messages(3)])
    for _ in range(3):
        msg = await sub.next_msg(timeout=5)
        received.append((msg.reply, msg.data, dict(msg.headers or {})))
    assert [r[2]["Nats-Msg-Id"] for r in received] == ["event-0", "event-1", "event-2"]
    assert {r[0] for r in received} == {"reply.to"}
    assert received[1][1] == b'{"n":1}'


# -- the publisher ------------------------------------------------------------------------


def test_server_versions_from_2_14_take_batches() -> None:
    class Version:
        def __init__(self, major: int, minor: int, patch: int) -> None:
            self.major, self.minor, self.patch = major, minor, patch

    assert server_supports_batches(Version(2, 14, 0))
    assert server_supports_batches(Version(3, 0, 1))
    assert not server_supports_batches(Version(2, 13, 9))
    assert not server_supports_batches(Version(2, 12, 1))
    assert not server_supports_batches(object())


async def test_a_batch_is_stored_once_and_a_resend_is_all_duplicates(
    nats_client: NatsClient, jetstream: JetStreamContext
) -> None:
    await _stream(jetstream, batched=True)
    publisher = await _publisher(nats_client)
    messages = _messages(2_500)  # more than the window: the sender waits for flow acks
    results = await publisher.publish(messages)
    assert {r.outcome for r in results} == {Outcome.STORED} and len(results) == 2_500
    again = await publisher.publish(messages)
    assert {r.outcome for r in again} == {Outcome.DUPLICATE}
    assert (await jetstream.stream_info("FAST")).state.messages == 2_500
    assert publisher.mode == "fast_ingest"
    await publisher.close()


async def _leave_a_batch_open(url: str, batch_id: str, count: int) -> None:
    """What a shipper stopped or killed mid-batch leaves on the stream for 10 s: a
    fast-ingest batch under ``batch_id`` with ``count`` messages stored and no commit."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        for seq in range(1, count + 1):
            op = 0 if seq == 1 else 1
            await nc.publish(
                SUBJECT,
                b'{"left":%d}' % seq,
                reply=f"{inbox}.{batch_id}.10.fail.{seq}.{op}.$FI",
                headers=contract_headers(f"left-{seq}"),
            )
        await nc.flush()
    finally:
        await nc.close()


async def test_a_batch_whose_id_the_stream_has_open_is_not_taken_as_stored(
    nats_server: NatsServer, nats_client: NatsClient, jetstream: JetStreamContext
) -> None:
    """Batch ids belong to the stream: a batch left open under the id our next batch
    uses answers it with a gap and then with its own final PubAck (count = what *it*
    stored). Taken at its word, our rows would be deleted unsent. Forced here (ids are
    random per publisher, so it takes two publishers drawing the same one)."""
    await _stream(jetstream, batched=True)
    await _leave_a_batch_open(nats_server.url, "1", 20)
    publisher = await _publisher(nats_client)
    publisher._id_base = ""  # its first batch is "1", the one left open
    messages = _messages(20)
    results = await publisher.publish(messages)
    assert {r.outcome for r in results} == {Outcome.STORED}
    stored = set(msg_ids(await read_stream(nats_server.url, stream="FAST")))
    assert {f"event-{i}" for i in range(20)} <= stored, "a row told stored is not in the stream"
    await publisher.close()


async def test_two_publishers_draw_different_batch_ids(nats_client: NatsClient) -> None:
    first, second = await _publisher(nats_client), await _publisher(nats_client)
    assert first._id_base != second._id_base and len(first._id_base) == 16
    await first.close()
    await second.close()


@pytest.mark.parametrize("where", [0, 3, 6], ids=["first", "middle", "last"])
async def test_a_failing_message_ends_the_batch_and_gets_its_own_outcome(
    nats_client: NatsClient, jetstream: JetStreamContext, where: int
) -> None:
    await _stream(jetstream, batched=True, max_msg_size=1_000)
    publisher = await _publisher(nats_client)
    results = await publisher.publish(_messages(7, big=frozenset({where})))
    outcomes = [r.outcome for r in results]
    assert outcomes[where] is Outcome.REJECTED
    assert "10054" in results[where].detail  # the server's reason, for the dead row
    assert outcomes[:where] + outcomes[where + 1 :] == [Outcome.STORED] * 6
    assert (await jetstream.stream_info("FAST")).state.messages == 6
    await publisher.close()


async def test_a_stream_that_refuses_batches_is_published_per_message(
    nats_client: NatsClient, jetstream: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    await _stream(jetstream, batched=False)
    publisher = await _publisher(nats_client)
    with caplog.at_level(logging.WARNING, logger="shipper"):
        results = await publisher.publish(_messages(20))
        later = await publisher.publish(_messages(20, first=20))
    assert {r.outcome for r in results + later} == {Outcome.STORED}
    assert publisher.mode == "per_message"
    assert sum("refuses fast-ingest" in r.message for r in caplog.records) == 1
    assert (await jetstream.stream_info("FAST")).state.messages == 40
    await publisher.close()


# -- the shipper: the choice at run time ------------------------------------------------------


def _mode_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "action", "") == "publish_mode"]


async def test_the_stream_the_shipper_creates_takes_fast_ingest_batches(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await write_events(outbox_path, 1_500)
    config = shipper_config(outbox_path, nats_server.url, batch_size=500)
    with caplog.at_level(logging.INFO, logger="shipper"):
        stats = await run_shipper.run(config)
    assert (await jetstream.stream_info(config.stream)).config.allow_batched is True
    assert [line.split(" (")[0] for line in _mode_lines(caplog)] == [
        "publishing in fast-ingest batches"
    ]
    assert stats.published == 1_500
    assert sorted(msg_ids(await read_stream(nats_server.url, config.stream))) == sorted(ids)
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}


async def test_an_adopted_stream_without_allow_batched_is_left_alone_and_used_per_message(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _stream(jetstream, batched=False)
    ids = await write_events(outbox_path, 600)
    config = shipper_config(outbox_path, nats_server.url)
    with caplog.at_level(logging.INFO, logger="shipper"):
        stats = await run_shipper.run(config)
    (line,) = _mode_lines(caplog)
    assert line.startswith("publishing with one PubAck per message: stream FAST does not set")
    assert (await jetstream.stream_info("FAST")).config.allow_batched in (None, False)
    assert stats.published == 600
    assert sorted(msg_ids(await read_stream(nats_server.url, "FAST"))) == sorted(ids)


def test_batch_publish_false_on_the_command_line_publishes_per_message(
    outbox_path: Path, nats_server: NatsServer
) -> None:
    env = shipper_env(USAGE_OUTBOX_URL=str(outbox_path), NATS_URL=nats_server.url)
    result = run_cli("run", "--exit-when-idle", "true", "--batch-publish", "false", env=env)
    assert result.returncode == 0, result.stderr
    assert "publishing with one PubAck per message: batch publishing is turned off" in (
        result.stdout + result.stderr
    )


async def test_a_batch_sent_without_answer_is_re_sent_per_message_and_told_duplicate(
    nats_server: NatsServer, nats_client: NatsClient, jetstream: JetStreamContext
) -> None:
    """A frozen server stores the batch after the publish gave up: the re-send must say
    duplicate, not count the events as new a second time."""
    await _stream(jetstream, batched=True)
    publisher = FastIngestPublisher(
        nats_client, Publisher(nats_client, timeout=0.5, max_in_flight=4000), timeout=0.5
    )
    await publisher.start()
    messages = _messages(30)
    nats_server.freeze()
    try:
        with pytest.raises(TransientError, match="no PubAck"):
            await publisher.publish(messages)
    finally:
        nats_server.thaw()
    results = await publisher.publish(messages + _messages(5, first=30))
    assert [r.outcome for r in results] == [Outcome.DUPLICATE] * 30 + [Outcome.STORED] * 5
    assert (await jetstream.stream_info("FAST")).state.messages == 35
    await publisher.close()
