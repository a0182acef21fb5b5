"""Beside the platform's real billing service, as ``shared/notes/real-ecosystem.md`` measured
it (``tests/isa_billing.py`` behaves the same way): a stream it can share in either start
order, the ids it reads, the key it de-duplicates on, and the other producers' subjects.

Real nats-server, real SQLite outbox, the real shipper and the reference billing.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamConfig

from billing.database import BillingDatabase
from outbox import Outbox
from outbox.sqlite import create_outbox_engine, sqlite_url
from outbox.stream_spec import DEFAULT_STREAM
from shipper import Shipper
from shipper.stream import StreamChoice
from tests.fixtures.billing import ConfigFactory, ConsumerFactory
from tests.fixtures.shipper import (
    ShipperRunner,
    read_stream,
    run_cli,
    shipper_config,
    shipper_env,
    usage_args,
)
from tests.isa_billing import IsaLikeBilling
from tests.metrics_http import scrape
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until

EVENTS = 20


async def write_with_ids(path: Path, count: int = EVENTS) -> list[str]:
    """Events as a service using contract 1.1 writes them: ids as keywords (session,
    organization) and, the legacy way, in metadata (request)."""
    async with Outbox(path) as outbox:
        return await outbox.record_many(
            {
                **usage_args(i),
                "session_id": f"sess-{i}",
                "organization_id": "org-1",
                "metadata": {"request_id": f"req-{i}"},
            }
            for i in range(count)
        )


def backup(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite outbox, as a backup tool takes it."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


async def test_shipper_first_then_the_real_billing_gets_every_event_once(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    ids = await write_with_ids(outbox_path)
    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url))
    assert stats.published == EVENTS

    billing = IsaLikeBilling(nats_server.url, deliver_policy=DeliverPolicy.ALL)
    try:
        await billing.start()
        assert billing.consuming, "billing found billing-stream and bound its durable to it"
        await wait_until(lambda: len(billing.billed) == EVENTS, message="every event billed")
        assert sorted(b.key for b in billing.billed) == sorted(f"usage-outbox:{i}" for i in ids)
        assert {b.session_id for b in billing.billed} == {f"sess-{i}" for i in range(EVENTS)}
        assert {b.request_id for b in billing.billed} == {f"req-{i}" for i in range(EVENTS)}
        assert {b.organization_id for b in billing.billed} == {"org-1"}
        # Its own output has a home in the same stream (billing.>), and its creation call,
        # refused because the stream exists, changed nothing of ours.
        info = await jetstream.stream_info(DEFAULT_STREAM)
        await wait_until(lambda: _holds(jetstream, 2 * EVENTS), message="billing.calculated stored")
        assert info.config.max_msgs in (None, -1)
    finally:
        await billing.close()


async def _holds(js: JetStreamContext, count: int) -> bool:
    return bool((await js.stream_info(DEFAULT_STREAM)).state.messages == count)


async def test_billing_first_then_the_shipper_adopts_its_stream_and_warns_of_max_msgs(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    billing = IsaLikeBilling(nats_server.url)  # deliver policy "new": it starts first
    try:
        await billing.start()
        assert billing.stream_call_error is None and billing.consuming
        ids = await write_with_ids(outbox_path)
        caplog.set_level(logging.INFO)
        shipper, _task = run_shipper.start(
            shipper_config(outbox_path, nats_server.url, exit_when_idle=False, metrics_port=0)
        )
        await wait_until(lambda: len(billing.billed) == EVENTS, message="every event billed")
        assert sorted(b.key for b in billing.billed) == sorted(f"usage-outbox:{i}" for i in ids)

        # Its stream keeps 100,000 messages and then discards the oldest, read or not:
        # said once at start-up, in the metric, and in status.
        warnings = [r for r in caplog.records if getattr(r, "action", "") == "stream_discard_risk"]
        assert len(warnings) == 1
        assert "max_msgs=100000" in warnings[0].getMessage()
        server = shipper.metrics.server
        assert server is not None
        await wait_until(lambda: server.port != 0, message="metrics server listening")
        metrics = await scrape(server.url)
        assert metrics.get("usage_shipper_stream_discard_risk", limit="max_msgs") == 1
        assert metrics.get("usage_shipper_stream_discard_risk", limit="subjects") is None
        await run_shipper.close()
    finally:
        await billing.close()

    status = run_cli("status", env=shipper_env(USAGE_OUTBOX_URL=str(outbox_path)))
    assert status.returncode == 0, status.stderr
    (line,) = [line for line in status.stdout.splitlines() if line.startswith("stream risk")]
    assert "'billing-stream' can lose usage events" in line and "max_msgs=100000" in line


async def test_redelivery_past_the_dedupe_window_is_billed_once_by_both_billings(
    tmp_path: Path,
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
    billing_config: ConfigFactory,
    make_consumer: ConsumerFactory,
) -> None:
    ids = await write_with_ids(outbox_path)
    saved = tmp_path / "backup.db"
    backup(outbox_path, saved)
    window = 0.5
    config = shipper_config(outbox_path, nats_server.url, duplicate_window=window)
    assert (await run_shipper.run(config)).published == EVENTS

    real = IsaLikeBilling(nats_server.url, deliver_policy=DeliverPolicy.ALL)
    reference_config = billing_config()
    reference = make_consumer(reference_config)
    try:
        await real.start()
        await wait_until(lambda: len(real.billed) == EVENTS, message="real billing billed all")
        assert (await reference.drain(0.5)).billed + reference.stats.unpriced == EVENTS

        # JetStream forgets the ids once the window has passed; the same id is then stored
        # again. Wait for that on a probe id, not for a guessed time.
        async def window_passed() -> bool:
            ack = await jetstream.publish("billing.test.probe", b"", headers={"Nats-Msg-Id": "p"})
            return not ack.duplicate

        await jetstream.publish("billing.test.probe", b"", headers={"Nats-Msg-Id": "p"})
        await wait_until(window_passed, within=10, interval=0.1, message="de-dup window over")

        # The outbox restored from the backup: every event is shipped a second time.
        backup(saved, outbox_path)
        again = await run_shipper.run(config)
        assert (again.published, again.duplicates) == (EVENTS, 0), "stored again, as feared"

        await wait_until(lambda: real.skipped == EVENTS, message="real billing saw the copies")
        assert len(real.billed) == EVENTS
        stats = await reference.drain(0.5)
        assert stats.duplicates == EVENTS
    finally:
        await real.close()
    async with BillingDatabase(reference_config.database_url, run_migrations=False) as db:
        assert sorted(await db.event_states()) == sorted(ids)


async def test_another_producers_two_token_subject_is_stored_beside_the_shipper(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    await write_with_ids(outbox_path, 3)
    await run_shipper.run(shipper_config(outbox_path, nats_server.url))
    # isa-common publishes with core NATS (no PubAck) on <source>.<resource>.
    producer = await nats.connect(nats_server.url)
    try:
        await producer.publish("billing.usage.recorded.text.gpt-4-1", b'{"user_id":"u"}')
        await producer.flush()
    finally:
        await producer.close()
    await wait_until(lambda: _holds(jetstream, 4), message="the core-NATS message stored")
    last = await jetstream.get_last_msg(DEFAULT_STREAM, "billing.usage.recorded.text.gpt-4-1")
    assert last.data == b'{"user_id":"u"}'


async def test_a_stream_capturing_only_one_token_is_adopted_with_a_warning(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await jetstream.add_stream(StreamConfig(name="OLD", subjects=["billing.usage.recorded.*"]))
    await write_with_ids(outbox_path, 3)
    caplog.set_level(logging.INFO)
    assert (await run_shipper.run(shipper_config(outbox_path, nats_server.url))).published == 3
    (warning,) = [r for r in caplog.records if getattr(r, "action", "") == "stream_discard_risk"]
    assert warning.risks == ["subjects"]  # type: ignore[attr-defined]
    assert "billing.usage.recorded.>" in warning.getMessage()


async def test_trace_context_is_published_as_headers(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with Outbox(outbox_path) as outbox:
        traced = await outbox.record(**usage_args(1), traceparent=traceparent, tracestate="k=v")
        plain = await outbox.record(**usage_args(2))
    assert (await run_shipper.run(shipper_config(outbox_path, nats_server.url))).published == 2
    headers = {m.headers["Nats-Msg-Id"]: m.headers for m in await read_stream(nats_server.url)}
    assert headers[traced]["traceparent"] == traceparent
    assert headers[traced]["tracestate"] == "k=v"
    assert "traceparent" not in headers[plain]


async def test_a_stream_note_that_cannot_be_written_does_not_stop_the_shipper(
    tmp_path: Path,
) -> None:
    # The note is best effort: an outbox that cannot take the write (here a path that is
    # a directory: every connection fails) is the loop's problem to back off from, not a
    # reason for the note to end the shipper.
    broken = tmp_path / "not-a-file"
    broken.mkdir()
    shipper = Shipper(
        shipper_config(tmp_path / "outbox.db", "nats://127.0.0.1:1"),
        engine=create_outbox_engine(sqlite_url(broken)),
    )
    shipper.link.stream = StreamChoice(
        name="billing-stream", created=False, risks=("max_msgs",), risk_text="can lose events"
    )
    try:
        await shipper._note_stream()  # raises nothing
        assert shipper._noted_stream_risk is None  # and tries again next step
    finally:
        await shipper.engine.dispose()
