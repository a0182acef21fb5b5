"""A shipper that dies mid-publish: re-publishing is absorbed by JetStream de-duplication,
attempts are counted from the lease's in-flight range, and a poison row ends in ``dead``.

(A row that crashes the shipper process itself, again and again, is in the unit tier:
``tests/unit/test_drain.py``, through the in-memory link's ``crash_on``.)"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

from outbox import leases, store
from outbox.sqlite import create_outbox_engine, sqlite_url
from outbox.stream_spec import DEFAULT_STREAM
from shipper.lease import LEASE_NAME
from tests.fixtures.shipper import (
    CliProcesses,
    ShipperRunner,
    lease,
    msg_ids,
    outbox_counts,
    outbox_rows,
    pending,
    read_stream,
    set_in_flight,
    shipper_config,
    shipper_env,
    stream_count,
    write_events,
)
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until


async def test_recover_in_flight_counts_one_attempt_on_the_dead_shippers_rows(
    outbox_path: Path,
) -> None:
    await write_events(outbox_path, 10)
    ids = [row["id"] for row in outbox_rows(outbox_path)]
    set_in_flight(outbox_path, ids[2], ids[5])
    engine = create_outbox_engine(sqlite_url(outbox_path))
    try:
        async with engine.begin() as conn:
            taken = await conn.run_sync(
                leases.take_lease, name=LEASE_NAME, owner="next", now=time.time(), ttl=5
            )
            assert taken  # the dead shipper's lease had expired
            assert await conn.run_sync(store.recover_in_flight, name=LEASE_NAME) == 4
        async with engine.begin() as conn:  # the range was cleared: nothing counted twice
            assert await conn.run_sync(store.recover_in_flight, name=LEASE_NAME) == 0
    finally:
        await engine.dispose()
    attempts = [row["attempts"] for row in outbox_rows(outbox_path)]
    assert attempts == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]


async def test_crash_between_puback_and_delete_republishes_as_duplicates(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 30)
    rows = outbox_rows(outbox_path)
    # The dead shipper claimed rows 1-12, published them, got the first 8 PubAcks and died
    # before it could delete them: they are in the stream and still in the outbox.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=DEFAULT_STREAM, subjects=["billing.usage.recorded.*"])
        for row in rows[:8]:
            ack = await js.publish(
                row["subject"],
                row["payload"],
                headers={"event_type": "billing.usage.recorded", "Nats-Msg-Id": row["event_id"]},
            )
            assert not ack.duplicate
    finally:
        await nc.close()
    set_in_flight(outbox_path, rows[0]["id"], rows[11]["id"])

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url))

    assert (stats.duplicates, stats.published) == (8, 22)
    counts = Counter(msg_ids(await read_stream(nats_server.url)))
    assert counts == Counter(ids)  # every event once: the re-publishes were absorbed
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}
    recovered = [r for r in caplog.records if getattr(r, "action", "") == "in_flight_recovered"]
    assert len(recovered) == 1 and "12 rows" in recovered[0].getMessage()


async def test_shipper_sigkilled_mid_run_then_restarted_leaves_one_copy_of_each_event(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    cli_processes: CliProcesses,
    tmp_path: Path,
) -> None:
    ids = await write_events(outbox_path, 20_000)
    env = shipper_env(
        USAGE_OUTBOX_URL=str(outbox_path),
        NATS_URL=nats_server.url,
        SHIPPER_BATCH_SIZE="500",
        SHIPPER_MAX_IN_FLIGHT="500",
        SHIPPER_LEASE_TTL="2",
        SHIPPER_BACKOFF_CAP="0.5",
    )
    process = cli_processes.start("run", env=env, log_path=tmp_path / "shipper.log")
    await wait_until(lambda: _count_or_zero(nats_server.url), 20, message="the subprocess ships")
    await wait_until(lambda: pending(outbox_path) < 17_000, 20, message="well under way")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    left = pending(outbox_path)
    in_stream = await stream_count(nats_server.url)
    assert 0 < left < 20_000, "kill landed outside the run: make the backlog larger"
    # every row gone from the outbox had its PubAck: acked first, deleted after
    assert in_stream >= 20_000 - left
    dead_lease = lease(outbox_path)
    assert dead_lease is not None and dead_lease["in_flight_from"] is not None

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url, lease_ttl=2.5))

    assert pending(outbox_path) == 0
    counts = Counter(msg_ids(await read_stream(nats_server.url)))
    assert [i for i, n in counts.items() if n > 1] == []
    assert set(counts) == set(ids)
    # the ones acked before the kill but not yet deleted came back as duplicates
    assert stats.duplicates == in_stream - (20_000 - left)
    assert stats.published + stats.duplicates == left


def _holder(path: Path) -> str | None:
    row = lease(path)
    return None if row is None else str(row["owner"])


async def _count_or_zero(url: str) -> int:
    try:
        return await stream_count(url)
    except Exception:
        return 0


async def test_a_poison_row_ends_dead_after_max_attempts_while_its_neighbours_ship(
    outbox_path: Path,
    nats_server: NatsServer,
    run_shipper: ShipperRunner,
    caplog: pytest.LogCaptureFixture,
    unused_tcp_port: int,
) -> None:
    """Each cycle: a shipper claims what a real one would, and dies with it in flight;
    the next shipper counts an attempt on those rows when it takes the lease. The claim
    shrinks the batch around rows that keep failing, so the poison row ends up alone."""
    caplog.set_level(logging.INFO)
    ids = await write_events(outbox_path, 12)
    poison = outbox_rows(outbox_path)[0]
    engine = create_outbox_engine(sqlite_url(outbox_path))
    dead_port = f"nats://127.0.0.1:{unused_tcp_port}"
    try:
        for cycle in range(3):
            # The shipper's own claim: a read, then the plan that shrinks suspect batches.
            async with engine.connect() as conn:
                due = await conn.run_sync(store.due_rows, now=time.time(), limit=4)
            claim = store.plan_claim(due, limit=4, max_attempts=3)
            assert claim.rows[0].id == poison["id"]
            set_in_flight(outbox_path, claim.rows[0].id, claim.rows[-1].id, owner=f"dead-{cycle}")
            # the successor takes the lease and counts the attempts (NATS is unreachable
            # here, so it ships nothing), then is stopped
            shipper, task = run_shipper.start(
                shipper_config(outbox_path, dead_port, exit_when_idle=False, batch_size=4)
            )
            await wait_until(
                lambda s=shipper: (
                    (row := lease(outbox_path)) is not None and row["owner"] == s.owner
                ),
                message="successor holds the lease",
            )
            shipper.stop()
            await task
    finally:
        await engine.dispose()
    attempts = {r["id"]: r["attempts"] for r in outbox_rows(outbox_path)}
    assert attempts[poison["id"]] == 3
    assert max(a for i, a in attempts.items() if i != poison["id"]) == 2  # cut loose in time

    stats = await run_shipper.run(
        shipper_config(outbox_path, nats_server.url, batch_size=4, max_attempts=3)
    )

    (dead,) = outbox_rows(outbox_path)
    assert dead["event_id"] == poison["event_id"] and dead["state"] == "dead"
    assert "gave up after 3 attempts" in dead["last_error"]
    assert stats.dead == 1 and stats.published == 11
    assert set(msg_ids(await read_stream(nats_server.url))) == set(ids[1:])
    assert any(getattr(r, "action", "") == "dead_lettered" for r in caplog.records)
