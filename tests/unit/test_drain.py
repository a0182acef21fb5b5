"""The drain against the in-memory link: batching, settlement, suspect batches, retries,
backoff and dead-lettering, each checked in the outbox file and in what was published."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from shipper import Shipper
from shipper.publisher import Outcome
from shipper.testing import InMemoryLink
from tests.fixtures.shipper import (
    execute,
    outbox_counts,
    outbox_rows,
    set_in_flight,
    write_events,
)
from tests.unit.helpers import lease_row, ship, unit_config
from usage_demo.waiting import wait_until

# -- batching and settlement -------------------------------------------------------------


async def test_every_row_is_published_once_in_batches_and_deleted_after_its_ack(
    outbox_path: Path,
) -> None:
    ids = await write_events(outbox_path, 450)
    stats, link = await ship(unit_config(outbox_path, batch_size=200))
    assert [len(call.event_ids) for call in link.publishes] == [200, 200, 50]
    assert link.stored_ids == ids  # in write order, each once
    assert Counter(link.sent_ids) == Counter(ids)
    assert not any(call.one_by_one for call in link.publishes)
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}
    assert outbox_rows(outbox_path) == []
    assert (stats.published, stats.duplicates, stats.batches, stats.dead) == (450, 0, 3, 0)
    assert lease_row(outbox_path) is None  # dropped at the end of the run


async def test_the_next_batch_goes_out_while_the_one_before_waits_for_its_acks(
    outbox_path: Path,
) -> None:
    await write_events(outbox_path, 600)
    link = InMemoryLink()
    link.hold()
    config = unit_config(outbox_path, batch_size=200, max_in_flight=400)
    task = asyncio.create_task(Shipper(config, link=link).run())
    try:
        await wait_until(lambda: link.held == 2, message="two batches in flight at once")
        lease = lease_row(outbox_path)
        assert lease is not None and (lease["in_flight_from"], lease["in_flight_to"]) == (1, 400)
    finally:
        link.release()
    stats = await asyncio.wait_for(task, 20)
    assert stats.published == 600


async def test_with_room_for_one_batch_the_next_is_recorded_but_not_sent(
    outbox_path: Path,
) -> None:
    await write_events(outbox_path, 600)
    link = InMemoryLink()
    link.hold()
    config = unit_config(outbox_path, batch_size=200, max_in_flight=300)
    task = asyncio.create_task(Shipper(config, link=link).run())
    try:

        def both_recorded() -> bool:
            lease = lease_row(outbox_path)
            return lease is not None and lease["in_flight_to"] == 400

        await wait_until(both_recorded, message="the batch ahead recorded in flight")
        assert link.entered == 1 and link.held == 1
    finally:
        link.release()
    assert (await asyncio.wait_for(task, 20)).published == 600


async def test_a_batch_is_settled_while_the_one_after_next_is_in_flight(
    outbox_path: Path,
) -> None:
    """Batch 1's acknowledged rows are deleted once batch 3 is out, not held until the
    drain ends; batch 2's acks wait for the next transaction, inside the range recorded."""
    await write_events(outbox_path, 900)
    link = InMemoryLink()
    link.hold(after=2)
    config = unit_config(outbox_path, batch_size=300, max_in_flight=600)
    task = asyncio.create_task(Shipper(config, link=link).run())
    try:
        await wait_until(lambda: link.held == 1, message="batch 3 in flight")

        def batch_one_settled() -> bool:
            return outbox_counts(outbox_path)["pending"] == 600

        await wait_until(batch_one_settled, message="batch 1 deleted")
        remaining = [row["id"] for row in outbox_rows(outbox_path)]
        assert remaining == list(range(301, 901))
        lease = lease_row(outbox_path)
        assert lease is not None and (lease["in_flight_from"], lease["in_flight_to"]) == (301, 900)
    finally:
        link.release()
    assert (await asyncio.wait_for(task, 20)).published == 900
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}


async def test_a_big_batch_is_settled_in_chunks_and_all_of_it(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 2_100)
    stats, link = await ship(unit_config(outbox_path, batch_size=1_000, max_in_flight=2_000))
    assert link.stored_ids == ids and stats.published == 2_100
    assert outbox_rows(outbox_path) == []


async def test_kept_sent_rows_are_marked_sent_not_deleted(outbox_path: Path) -> None:
    await write_events(outbox_path, 300)
    await ship(unit_config(outbox_path, keep_sent_hours=1.0))
    rows = outbox_rows(outbox_path)
    assert len(rows) == 300 and {row["state"] for row in rows} == {"sent"}
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 0}


async def test_a_duplicate_puback_counts_as_delivered(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 5)
    link = InMemoryLink()
    link.answer(ids[2], Outcome.DUPLICATE)
    stats, _ = await ship(unit_config(outbox_path), link)
    assert (stats.published, stats.duplicates) == (4, 1)
    assert outbox_rows(outbox_path) == []


# -- suspect batches ----------------------------------------------------------------------


async def test_rows_left_in_flight_by_a_dead_shipper_are_charged_and_sent_one_by_one(
    outbox_path: Path,
) -> None:
    ids = await write_events(outbox_path, 300)
    set_in_flight(outbox_path, 1, 12)  # a dead shipper's claim, its lease expired
    stats, link = await ship(unit_config(outbox_path, batch_size=100))
    first, *rest = link.publishes
    # One attempt each on rows 1-12: a suspect batch, full size (the first failed
    # attempt is most likely a deploy), published with one PubAck per message.
    assert first.one_by_one and len(first.event_ids) == 100
    assert not any(call.one_by_one for call in rest)
    assert link.stored_ids == ids and stats.published == 300


async def test_a_row_with_failed_attempts_shrinks_the_batch_around_it(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 300)
    execute(outbox_path, "UPDATE usage_outbox SET attempts = 2 WHERE id = 5")
    _, link = await ship(unit_config(outbox_path, batch_size=200))
    sizes = [(len(call.event_ids), call.one_by_one) for call in link.publishes]
    assert sizes[0] == (50, True)  # 200 / 4: a row that failed twice shares less
    assert sizes[1] == (200, False)  # the batch after it is not suspect
    assert link.stored_ids == ids


async def test_a_row_that_crashes_the_shipper_ends_dead_and_its_neighbours_ship(
    outbox_path: Path,
) -> None:
    """Each run dies with the poison row in flight. The attempt started on it is charged
    as the run ends on an exception, so it reaches max_attempts and goes to dead, and the
    shrinking batch around it lets its neighbours through."""
    ids = await write_events(outbox_path, 40)
    poison = ids[5]
    config = unit_config(outbox_path, batch_size=16, max_attempts=5)
    link = InMemoryLink()
    link.crash_on(poison)
    crashes = 0
    for _ in range(10):
        try:
            stats, _ = await ship(config, link)
        except RuntimeError:
            crashes += 1
            continue
        break
    else:
        pytest.fail("the poison row kept crashing the shipper: its attempts are not counted")
    assert crashes == 5
    (dead,) = outbox_rows(outbox_path)
    assert dead["event_id"] == poison and dead["state"] == "dead"
    assert "gave up after 5 attempts" in dead["last_error"]
    assert stats.dead == 1
    assert set(link.stored_ids) == set(ids) - {poison}


# -- retries and backoff ------------------------------------------------------------------


async def test_a_row_without_a_puback_is_retried_after_its_backoff(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 10)
    link = InMemoryLink()
    link.time_out(ids[3])
    before = time.time()
    stats, _ = await ship(unit_config(outbox_path, retry_base=30, retry_cap=60), link)
    (row,) = outbox_rows(outbox_path)  # burst mode stops: the row is not due yet
    assert row["event_id"] == ids[3] and row["state"] == "pending"
    assert row["attempts"] == 1 and "no PubAck" in row["last_error"]
    assert before + 15 <= row["next_attempt_at"] <= time.time() + 60  # jittered 0.5-1x
    assert stats.retried == 1 and stats.published == 9
    execute(outbox_path, "UPDATE usage_outbox SET next_attempt_at = 0")  # its time came
    stats, _ = await ship(unit_config(outbox_path), link)
    assert stats.published == 1 and outbox_rows(outbox_path) == []
    assert link.sent_ids.count(ids[3]) == 2


async def test_a_connection_that_cannot_publish_hands_rows_back_and_backs_off(
    outbox_path: Path,
) -> None:
    ids = await write_events(outbox_path, 50)
    link = InMemoryLink()
    link.fail_publish(times=3)
    started = time.monotonic()
    stats, _ = await ship(unit_config(outbox_path, backoff_cap=0.2), link)
    assert link.stored_ids == ids
    assert link.connects == 4  # a new connection after each failure
    assert stats.released == 150 and stats.retried == 0 and stats.dead == 0
    assert "cannot publish" in (stats.last_error or "")
    assert time.monotonic() - started >= 0.05 + 0.1  # waited 50 ms, then 100 ms, ...
    rows = outbox_rows(outbox_path)
    assert rows == []


async def test_nats_unreachable_at_start_is_waited_out(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 20)
    link = InMemoryLink()
    link.fail_connect(times=3)
    stats, _ = await ship(unit_config(outbox_path, backoff_cap=0.2), link)
    assert link.stored_ids == ids and link.connects == 1
    assert "cannot connect" in (stats.last_error or "")


async def test_a_missing_stream_hands_the_batch_back_and_checks_the_stream_again(
    outbox_path: Path,
) -> None:
    ids = await write_events(outbox_path, 10)
    link = InMemoryLink()
    link.answer(ids[0], Outcome.UNREACHABLE, "no responders")
    stats, _ = await ship(unit_config(outbox_path, backoff_cap=0.2), link)
    assert link.stream_checks == 1
    assert stats.released == 1 and stats.retried == 0
    assert set(link.stored_ids) == set(ids) and link.sent_ids.count(ids[0]) == 2
    assert outbox_rows(outbox_path) == []


# -- dead-lettering -----------------------------------------------------------------------


async def test_a_row_the_stream_refuses_goes_to_dead_with_the_reason(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 10)
    link = InMemoryLink()
    link.answer(ids[4], Outcome.REJECTED, "JetStream 400/10054: maximum message size exceeded")
    stats, _ = await ship(unit_config(outbox_path), link)
    (dead,) = outbox_rows(outbox_path)
    assert dead["event_id"] == ids[4] and dead["state"] == "dead"
    assert dead["last_error"] == "JetStream 400/10054: maximum message size exceeded"
    assert stats.dead == 1 and stats.published == 9


async def test_a_row_that_can_never_be_sent_is_refused_before_publishing(
    outbox_path: Path,
) -> None:
    ids = await write_events(outbox_path, 10)
    execute(outbox_path, "UPDATE usage_outbox SET headers = '{}' WHERE id = 3")
    execute(outbox_path, "UPDATE usage_outbox SET subject = 'elsewhere.x' WHERE id = 4")
    stats, link = await ship(unit_config(outbox_path), link=InMemoryLink(max_payload=100_000))
    dead = {row["id"]: row["last_error"] for row in outbox_rows(outbox_path)}
    assert dead.keys() == {3, 4}
    assert "Nats-Msg-Id" in dead[3] and "not one token" in dead[4]
    assert ids[2] not in link.sent_ids and ids[3] not in link.sent_ids
    assert stats.dead == 2 and stats.published == 8


async def test_a_message_over_max_payload_is_refused(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 3)
    stats, link = await ship(unit_config(outbox_path), link=InMemoryLink(max_payload=64))
    assert link.sent_ids == [] and stats.dead == 3
    assert all("max_payload 64" in row["last_error"] for row in outbox_rows(outbox_path))
    assert {row["event_id"] for row in outbox_rows(outbox_path)} == set(ids)


async def test_a_row_out_of_attempts_is_buried_with_its_last_error(outbox_path: Path) -> None:
    ids = await write_events(outbox_path, 5)
    execute(
        outbox_path,
        "UPDATE usage_outbox SET attempts = 3, last_error = 'timed out' WHERE id = 2",
    )
    stats, link = await ship(unit_config(outbox_path, max_attempts=3))
    (dead,) = outbox_rows(outbox_path)
    assert dead["id"] == 2 and dead["state"] == "dead"
    assert dead["last_error"] == "timed out (gave up after 3 attempts)"
    assert ids[1] not in link.sent_ids and stats.dead == 1
