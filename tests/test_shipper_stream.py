"""The stream: created when missing, adopted when an operator's stream captures the
subjects, and a clear refusal (exit 2, outbox untouched) when the named one does not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from outbox.stream_spec import DEFAULT_STREAM
from shipper.errors import ConfigError, StreamMismatch
from shipper.stream import subject_covers, subjects_collide
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


@pytest.mark.parametrize(
    ("pattern", "covered"),
    [
        ("billing.usage.recorded.*", True),
        ("billing.usage.recorded.>", True),
        ("billing.usage.>", True),
        ("billing.*.recorded.*", True),
        (">", True),
        ("billing.usage.recorded", False),
        ("billing.usage.recorded.gpt-4", False),
        ("billing.usage.recorded.*.*", False),
        ("billing.usage.*", False),
        ("other.>", False),
    ],
)
def test_subject_covers(pattern: str, covered: bool) -> None:
    assert subject_covers(pattern, "billing.usage.recorded.*") is covered


@pytest.mark.parametrize(
    ("pattern", "collides"),
    [
        ("billing.usage.recorded.gpt-4", True),
        ("billing.>", True),
        ("*.usage.*.x", True),
        ("billing.usage.recorded", False),
        ("billing.usage.recorded.a.b", False),
        ("orders.>", False),
    ],
)
def test_subjects_collide(pattern: str, collides: bool) -> None:
    assert subjects_collide(pattern, "billing.usage.recorded.*") is collides


async def test_the_stream_is_created_with_file_storage_and_the_configured_window(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    await write_events(outbox_path, 3)
    await run_shipper.run(shipper_config(outbox_path, nats_server.url, duplicate_window=900))
    info = await jetstream.stream_info(DEFAULT_STREAM)
    # The stream the platform's billing service asks for: it binds to billing-stream by
    # name and publishes its own billing.calculated events into it.
    assert info.config.subjects == ["billing.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == 900
    assert info.config.max_age == 30 * 24 * 3600
    assert info.config.max_msgs in (None, -1)  # a count limit would discard unread usage
    assert info.state.messages == 3


async def test_an_operators_stream_that_captures_the_subjects_is_adopted(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await jetstream.add_stream(
        StreamConfig(name="OPS_BILLING", subjects=["billing.usage.recorded.>"], duplicate_window=60)
    )
    ids = await write_events(outbox_path, 25)

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url))

    assert stats.published == 25
    assert set(msg_ids(await read_stream(nats_server.url, "OPS_BILLING"))) == set(ids)
    with pytest.raises(NotFoundError):
        await jetstream.stream_info(DEFAULT_STREAM)  # nothing of ours was created beside it
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert "stream_adopted" in actions
    assert "stream_dedupe_window_short" in actions  # 60 s < the 600 s asked for


async def test_the_named_stream_not_capturing_the_subjects_stops_the_shipper_at_start(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    await jetstream.add_stream(StreamConfig(name=DEFAULT_STREAM, subjects=["usage.other.>"]))
    await write_events(outbox_path, 10)

    with pytest.raises(StreamMismatch) as raised:
        await run_shipper.run(shipper_config(outbox_path, nats_server.url, exit_when_idle=False))
    message = str(raised.value)
    assert DEFAULT_STREAM in message and "usage.other.>" in message
    assert "billing.usage.recorded.>" in message
    assert outbox_counts(outbox_path) == {"pending": 10, "dead": 0}

    cli = run_cli(
        "run", env=shipper_env(USAGE_OUTBOX_URL=str(outbox_path), NATS_URL=nats_server.url)
    )
    assert cli.returncode == 2
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith(f"usage-shipper: stream {DEFAULT_STREAM!r} exists")
    assert "Traceback" not in cli.stderr
    assert outbox_counts(outbox_path) == {"pending": 10, "dead": 0}
    assert (await jetstream.stream_info(DEFAULT_STREAM)).config.subjects == ["usage.other.>"]


async def test_a_stream_taking_part_of_the_subjects_is_reported_not_retried_for_ever(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    # Another stream holds one product's subject: a stream on billing.usage.recorded.*
    # would overlap it, which JetStream refuses. That needs an operator, not a retry.
    await jetstream.add_stream(
        StreamConfig(name="GPT4_ONLY", subjects=["billing.usage.recorded.gpt-4"])
    )
    await write_events(outbox_path, 5)
    with pytest.raises(ConfigError) as raised:
        await run_shipper.run(
            shipper_config(outbox_path, nats_server.url, exit_when_idle=False), within=10
        )
    message = str(raised.value)
    assert "overlap" in message and "GPT4_ONLY" in message
    assert outbox_counts(outbox_path) == {"pending": 5, "dead": 0}


async def test_no_stream_and_no_creation_allowed_is_a_config_error(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    await write_events(outbox_path, 2)
    with pytest.raises(StreamMismatch, match="no-create-stream"):
        await run_shipper.run(shipper_config(outbox_path, nats_server.url, create_stream=False))
    assert outbox_counts(outbox_path) == {"pending": 2, "dead": 0}


async def test_replicas_a_single_server_cannot_hold_is_a_config_error(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    await write_events(outbox_path, 2)
    with pytest.raises(StreamMismatch, match="replicas"):
        await run_shipper.run(shipper_config(outbox_path, nats_server.url, replicas=3), within=10)
    assert outbox_counts(outbox_path) == {"pending": 2, "dead": 0}
