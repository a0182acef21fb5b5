"""NATS unavailable: at start-up, killed mid-run, and down long enough for nats-py to give up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from outbox import Outbox
from outbox.stream_spec import DEFAULT_STREAM
from tests.fixtures.shipper import (
    ShipperRunner,
    lease,
    msg_ids,
    outbox_rows,
    pending,
    read_stream,
    shipper_config,
    stream_count,
    usage_args,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


def _actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


@pytest.fixture
def stopped_server(tmp_path: Path, nats_server_binary: str) -> NatsServer:
    """A server that has run once (so its port is known) and is now stopped."""
    server = NatsServer(tmp_path / "nats-late", binary=nats_server_binary)
    server.start()
    server.stop()
    yield server  # type: ignore[misc]
    server.stop()


async def test_nats_down_at_start_events_wait_then_ship_and_writers_are_never_slowed(
    outbox_path: Path,
    stopped_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    early = await write_events(outbox_path, 100)
    shipper, task = run_shipper.start(
        shipper_config(outbox_path, stopped_server.url, exit_when_idle=False)
    )
    await wait_until(lambda: _actions(caplog, "nats_error"), message="connect refused")
    assert pending(outbox_path) == 100

    # Writers while NATS is down: every write succeeds, and quickly.
    written: list[str] = []
    slowest = 0.0
    async with Outbox(outbox_path) as outbox:
        for i in range(50):
            started = time.perf_counter()
            written.append(await outbox.record(**usage_args(i)))
            slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.25, f"a write took {slowest:.3f} s while NATS was down"
    assert pending(outbox_path) == 150
    assert not task.done()

    stopped_server.start()
    await wait_until(lambda: pending(outbox_path) == 0, 15, message="shipped after NATS came up")
    ids = msg_ids(await read_stream(stopped_server.url))
    assert Counter(ids) == Counter(early + written)
    assert shipper.stats.published == 150
    assert shipper.stats.retried == 0  # NATS being down burnt no row's attempts


async def test_a_stop_while_nats_is_down_is_prompt(
    outbox_path: Path,
    stopped_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # nats-py's first connect retries for max_reconnect_attempts x 1 s (for ever when
    # negative); a SIGTERM meanwhile must not wait for it.
    caplog.set_level(logging.INFO)
    await write_events(outbox_path, 10)
    shipper, task = run_shipper.start(
        shipper_config(
            outbox_path, stopped_server.url, exit_when_idle=False, max_reconnect_attempts=-1
        )
    )
    await wait_until(lambda: len(_actions(caplog, "nats_error")) >= 2, message="retrying")
    shipper.stop()
    started = time.monotonic()
    await asyncio.wait_for(task, 3)
    assert time.monotonic() - started < 1.5
    assert pending(outbox_path) == 10
    assert lease(outbox_path) is None  # the lease was handed back


async def test_server_killed_and_restarted_mid_run_loses_nothing_and_duplicates_nothing(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 4000)
    shipper, _task = run_shipper.start(
        shipper_config(
            outbox_path, nats_server.url, exit_when_idle=False, batch_size=50, max_in_flight=50
        )
    )
    await wait_until(lambda: shipper.stats.published >= 300, message="shipping under way")
    nats_server.kill()
    killed_at_pending = pending(outbox_path)
    assert killed_at_pending > 0, "the backlog was gone before the kill: make it larger"
    await wait_until(lambda: _actions(caplog, "nats_disconnected"), message="disconnect seen")

    nats_server.start()  # same port, same store
    await wait_until(lambda: pending(outbox_path) == 0, 20, message="backlog drained")
    messages = await read_stream(nats_server.url)
    counts = Counter(msg_ids(messages))
    assert [i for i, n in counts.items() if n > 1] == []  # no event twice in the stream
    assert set(counts) == set(ids)  # nothing lost
    assert shipper.stats.connections == 1  # nats-py reconnected the same connection
    assert _actions(caplog, "nats_reconnected")
    # Losing the connection is not the rows' fault: no row was charged an attempt.
    assert shipper.stats.retried == 0
    assert shipper.stats.dead == 0


async def test_a_connection_closed_for_good_is_replaced_by_a_new_one(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    first = await write_events(outbox_path, 50)
    shipper, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, max_reconnect_attempts=1)
    )
    await wait_until(lambda: pending(outbox_path) == 0, message="first events shipped")
    nats_server.kill()
    # nats-py tries once more (reconnect_time_wait apart), then closes for good.
    await wait_until(lambda: _actions(caplog, "nats_closed"), 10, message="client gave up")
    second = await write_events(outbox_path, 50)
    await wait_until(
        lambda: "cannot connect" in (shipper.stats.last_error or ""),
        message="shipper tries a new connection",
    )
    nats_server.start()
    await wait_until(lambda: pending(outbox_path) == 0, 15, message="second events shipped")
    assert shipper.stats.connections == 2
    assert Counter(msg_ids(await read_stream(nats_server.url))) == Counter(first + second)
    assert outbox_rows(outbox_path) == []
    assert await stream_count(nats_server.url) == 100


async def test_no_stream_responder_holds_rows_without_burning_attempts(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    """The stream vanishes under a running shipper that may not create one (503, no
    responders): rows wait with no attempt counted, and ship once an operator puts a
    stream back."""
    await jetstream.add_stream(name=DEFAULT_STREAM, subjects=["billing.usage.recorded.*"])
    first = await write_events(outbox_path, 10)
    shipper, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False, create_stream=False)
    )
    await wait_until(lambda: pending(outbox_path) == 0, message="first events shipped")
    await jetstream.delete_stream(DEFAULT_STREAM)
    second = await write_events(outbox_path, 10)
    await wait_until(lambda: shipper.stats.released >= 10, message="rows handed back")
    await wait_until(lambda: "not stored" in (shipper.stats.last_error or ""), message="why")
    assert pending(outbox_path) == 10
    assert {row["attempts"] for row in outbox_rows(outbox_path)} == {0}
    assert shipper.stats.retried == 0 and shipper.stats.dead == 0

    await jetstream.add_stream(name=DEFAULT_STREAM, subjects=["billing.usage.recorded.*"])
    await wait_until(lambda: pending(outbox_path) == 0, 10, message="shipped after the stream")
    assert Counter(msg_ids(await read_stream(nats_server.url))) == Counter(second)
    assert set(first).isdisjoint(msg_ids(await read_stream(nats_server.url)))


async def test_a_stream_deleted_under_a_running_shipper_is_created_again(
    outbox_path: Path,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    run_shipper: ShipperRunner,
) -> None:
    """With stream creation allowed, the shipper does not wait for a restart: the first
    batch with no stream responder makes it check the stream again, and it re-creates it."""
    await write_events(outbox_path, 10)
    shipper, _task = run_shipper.start(
        shipper_config(outbox_path, nats_server.url, exit_when_idle=False)
    )
    await wait_until(lambda: pending(outbox_path) == 0, message="first events shipped")
    await jetstream.delete_stream(DEFAULT_STREAM)
    second = await write_events(outbox_path, 10)
    await wait_until(lambda: pending(outbox_path) == 0, 10, message="shipped to a new stream")
    assert Counter(msg_ids(await read_stream(nats_server.url))) == Counter(second)
    assert shipper.stats.dead == 0 and shipper.stats.connections == 1
