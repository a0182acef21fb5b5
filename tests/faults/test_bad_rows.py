"""Scenario 7 of issue 5: rows corrupted directly in the outbox database.

Events are written through the write API, then some rows are damaged with plain SQL, as
a bad restore, a hand edit or a buggy producer would leave them: payloads that are not
JSON, not UTF-8 or someone else's, headers missing, garbled or unusable, a subject with
two tokens, payloads over the server's ``max_payload`` (alone, or only with the headers)
and over the stream's ``max_msg_size``. Each bad row must end ``dead`` with a reason that
says what is wrong with it, and every other event must ship and be billed. Audit, with
the bad rows as ``expect_dead``.

Phase 2 runs the shipper with ``--parse-payloads``: a payload damaged *inside* (the
envelope the default check looks at is intact) goes to dead too. Without the flag such a
row is shipped and billing keeps it in ``rejected_events`` (the documented trade-off of
the envelope check), so it is not part of phase 1.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from bench.faults.audit import WrittenLog
from bench.faults.harness import Workspace
from bench.faults.helpers import outbox_rows, outbox_sql
from bench.faults.results import ScenarioResult, timed
from bench.faults.traffic import usage_call, written_record
from outbox import Outbox
from outbox.contract import build_usage_event
from outbox.stream_spec import DEFAULT_STREAM
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until_sync

pytestmark = pytest.mark.faults

MAX_PAYLOAD = 8192  # the server's: small, so an event the write API accepts can exceed it
STREAM_MAX_MSG = 6144  # the stream's own limit, below max_payload: a 400 per message
GOOD_EVENTS = 2000


@pytest.fixture
def small_nats(tmp_path: Path, nats_server_binary: str) -> Any:
    server = NatsServer(
        tmp_path / "nats-small",
        binary=nats_server_binary,
        config_text=f"max_payload: {MAX_PAYLOAD}\n",
    )
    server.start()
    yield server
    server.stop()


def _sized_call(index: int, payload_size: int) -> dict[str, Any]:
    """Write-API arguments whose encoded payload is exactly ``payload_size`` bytes."""
    call = usage_call(random.Random(index), writer=99, index=index)
    call["metadata"] = {}
    base = len(build_usage_event(**call).payload)
    call["metadata"] = {"blob": "x" * (payload_size - base - len(',"blob":""'))}
    assert len(build_usage_event(**call).payload) == payload_size
    return call


async def _write_extra(ws: Workspace, calls: list[dict[str, Any]]) -> list[str]:
    """Write ``calls`` through the write API, logging each committed one for the audit."""
    log = WrittenLog(ws.written_dir / "writer-extra.jsonl")
    try:
        async with Outbox(ws.outbox_path) as outbox:
            ids = await outbox.record_many(calls)
        for event_id, call in zip(ids, calls, strict=True):
            log.add(written_record(event_id, call))
    finally:
        log.close()
    return ids


async def _operator_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=DEFAULT_STREAM,
                subjects=["billing.usage.recorded.*"],
                storage=StorageType.FILE,
                max_msg_size=STREAM_MAX_MSG,
            )
        )
    finally:
        await nc.close()


def test_corrupted_rows_go_dead_with_their_reason_and_the_rest_ships(
    workspace: Workspace, small_nats: NatsServer
) -> None:
    ws, url = workspace, small_nats.url
    with timed() as elapsed:
        ws.set_prices()
        asyncio.run(_operator_stream(url))
        billing = ws.billing(url)
        ws.writers(1, events=GOOD_EVENTS).wait(60)
        # Events that are valid for the write API (64 KiB limit) yet too big downstream,
        # between good ones, so rows after them must still ship.
        sized = {
            "over max_payload": _sized_call(1, MAX_PAYLOAD + 500),
            # the payload alone fits (nats-py would send it); with the headers it does not,
            # and the server would close the connection
            "over max_payload with headers": _sized_call(2, MAX_PAYLOAD - 20),
            "over the stream's max_msg_size": _sized_call(3, STREAM_MAX_MSG + 300),
        }
        rng = random.Random(7)
        extra = [usage_call(rng, 98, i) for i in range(50)] + list(sized.values())
        extra += [usage_call(rng, 98, i) for i in range(50, 100)]
        extra_ids = asyncio.run(_write_extra(ws, extra))
        sized_ids = dict(zip(sized, extra_ids[50:53], strict=True))

        rows = outbox_rows(ws.outbox_path)
        assert len(rows) == GOOD_EVENTS + 103
        expected = _corrupt(ws.outbox_path, rows)
        for what, event_id in sized_ids.items():
            expected[event_id] = (what, _SIZE_REASONS[what])

        shipper = ws.shipper(url, exit_when_idle="true")
        assert shipper.wait(60) == 0, shipper.log_text()[-3000:]

        # Phase 2: damage inside a payload, caught only by --parse-payloads.
        more = [usage_call(rng, 97, i) for i in range(100)]
        more_ids = asyncio.run(_write_extra(ws, more))
        (inner,) = outbox_rows(ws.outbox_path, "event_id = ?", more_ids[40])
        damaged = bytes(inner["payload"]).replace(b'"usage_amount":', b'"usage_amount" ', 1)
        assert damaged != inner["payload"]
        outbox_sql(
            ws.outbox_path, "UPDATE usage_outbox SET payload = ? WHERE id = ?", damaged, inner["id"]
        )
        expected[inner["event_id"]] = (
            "JSON damaged inside the envelope",
            "payload is not UTF-8 JSON",
        )
        strict = ws.shipper(
            url,
            name="shipper-strict",
            flags=["--parse-payloads", "true"],
            exit_when_idle="true",
        )
        assert strict.wait(60) == 0, strict.log_text()[-3000:]

        total = len(ws.written())
        ships = total - len(expected)
        wait_until_sync(
            lambda: ws.billed() >= ships,
            60,
            message=f"{ships} events billed",
            explain=lambda: f"billed {ws.billed()}",
            interval=0.05,
        )
        assert billing.stop() == 0, billing.log_text()[-3000:]
        report = ws.audit(url, expect_dead=set(expected))

    dead = {r["event_id"]: r["last_error"] for r in outbox_rows(ws.outbox_path, "state = 'dead'")}
    notes = [f"{len(expected)} rows damaged:"]
    for event_id, (what, _reason) in sorted(expected.items(), key=lambda kv: kv[1][0]):
        notes.append(f"  {what:<34} -> {str(dead.get(event_id))[:110]}")
    result = ScenarioResult(
        "7. bad rows in the table", report, faults=len(expected), seconds=elapsed(), notes=notes
    )
    print(result.summary())
    assert report.ok, result.summary()
    assert report.stream_messages == ships
    for event_id, (what, reason) in expected.items():
        assert event_id in dead, f"{what}: not dead"
        assert reason in (dead[event_id] or ""), f"{what}: reason {dead[event_id]!r}"
    assert billing_rejections(ws) == 0


_SIZE_REASONS = {
    "over max_payload": "over the server's max_payload",
    "over max_payload with headers": "over the server's max_payload",
    "over the stream's max_msg_size": "size exceeds",
}


def _corrupt(path: Path, rows: list[Any]) -> dict[str, tuple[str, str]]:
    """Damage scattered rows; return {event_id: (what was done, expected reason text)}."""
    picks = iter(rows[25:GOOD_EVENTS:150])  # spread over the table, never the last
    expected: dict[str, tuple[str, str]] = {}

    def damage(what: str, reason: str, column: str, value: object) -> None:
        row = next(picks)
        outbox_sql(path, f"UPDATE usage_outbox SET {column} = ? WHERE id = ?", value, row["id"])
        expected[row["event_id"]] = (what, reason)

    def payload_of(row: Any) -> bytes:
        return bytes(row["payload"])

    victim = rows[100]
    # payloads
    damage("payload truncated", "payload is not a JSON object", "payload", payload_of(victim)[:97])
    damage("payload not UTF-8", "payload is not a JSON object", "payload", b"\xff\xfe\x00garbage")
    damage(
        "payload of another event", "payload is not a JSON object", "payload", payload_of(victim)
    )
    damage("payload empty", "payload is not a JSON object", "payload", b"")
    # headers
    damage("headers not JSON", "headers are not JSON", "headers", '{"event_type": billing')
    damage("headers empty object", "lack Nats-Msg-Id", "headers", "{}")
    damage("headers a JSON array", "not a JSON object of strings", "headers", "[]")
    damage(
        "headers: Nats-Msg-Id of another event",
        "lack Nats-Msg-Id",
        "headers",
        json.dumps({"event_type": "billing.usage.recorded", "Nats-Msg-Id": victim["event_id"]}),
    )
    row = next(picks)
    outbox_sql(
        path,
        "UPDATE usage_outbox SET headers = ? WHERE id = ?",
        json.dumps({"bad header": "x", "Nats-Msg-Id": row["event_id"]}),
        row["id"],
    )
    expected[row["event_id"]] = ("header name with a space", "not a valid NATS header name")
    row = next(picks)
    outbox_sql(
        path,
        "UPDATE usage_outbox SET headers = ? WHERE id = ?",
        json.dumps({"event_type": "a\r\nb", "Nats-Msg-Id": row["event_id"]}),
        row["id"],
    )
    expected[row["event_id"]] = ("header value with CR LF", "line break")
    # subjects
    damage(
        "subject with two tokens", "is not one token", "subject", "billing.usage.recorded.gpt-4.1"
    )
    damage("subject with a wildcard", "is not one token", "subject", "billing.usage.recorded.*")
    damage("subject with an empty token", "is not one token", "subject", "billing.usage.recorded.")
    return expected


def billing_rejections(ws: Workspace) -> int:
    """Messages billing refused: none, since every bad row stopped at the shipper."""
    with closing(sqlite3.connect(ws.billing_path)) as conn:
        return int(conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0])


def test_damage_inside_the_envelope_ships_and_billing_rejects_it_without_stopping(
    workspace: Workspace, nats_server: NatsServer
) -> None:
    """Under the default (envelope) check, a payload damaged inside is shipped; billing
    must keep it in ``rejected_events`` with its reason and go on. Regression: a JSON
    array as ``unit_type`` raised TypeError in billing's decoder, which stopped the
    consumer, and it stopped again on every redelivery of the message."""
    ws, url = workspace, nats_server.url
    ws.set_prices()
    billing = ws.billing(url)
    ws.writers(1, events=300).wait(60)
    rows = [r for r in outbox_rows(ws.outbox_path) if b'"unit_type":"token"' in r["payload"]]
    damaged = {}
    for row, bad in zip(rows[10:40:10], ('["token"]', '{"t":1}', "null"), strict=True):
        payload = bytes(row["payload"]).replace(
            b'"unit_type":"token"', f'"unit_type":{bad}'.encode()
        )
        outbox_sql(
            ws.outbox_path, "UPDATE usage_outbox SET payload = ? WHERE id = ?", payload, row["id"]
        )
        damaged[row["event_id"]] = bad
    shipper = ws.shipper(url, exit_when_idle="true")
    assert shipper.wait(60) == 0, shipper.log_text()[-3000:]
    wait_until_sync(
        lambda: ws.billed() >= 300 - len(damaged) and billing_rejections(ws) >= len(damaged),
        30,
        message="everything billed or rejected",
        explain=lambda: (
            f"billed {ws.billed()}, rejected {billing_rejections(ws)}, "
            f"billing {'running' if billing.running else 'exited'}"
        ),
        interval=0.05,
    )
    assert billing.running, billing.log_text()[-3000:]
    assert billing.stop() == 0
    with closing(sqlite3.connect(ws.billing_path)) as conn:
        reasons = dict(conn.execute("SELECT event_id, reason FROM rejected_events"))
        billed = {r[0] for r in conn.execute("SELECT event_id FROM billing_records")}
    assert set(reasons) == set(damaged)
    assert all(reason.startswith("unit_type: ") for reason in reasons.values()), reasons
    assert billed == set(ws.written()) - set(damaged)
    print(f"\n7b. damage inside the envelope: {len(damaged)} rows shipped; billing: {reasons}")
