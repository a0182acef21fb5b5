"""Rows that can never be sent go to ``dead`` with a reason while every other row ships;
``usage-shipper dead list`` shows them and ``dead requeue`` makes them pending again."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from outbox import Outbox
from outbox.stream_spec import DEFAULT_STREAM
from shipper.cli import main
from tests.fixtures.shipper import (
    ShipperRunner,
    msg_ids,
    outbox_counts,
    outbox_rows,
    read_stream,
    run_cli,
    shipper_config,
    shipper_env,
    usage_args,
    write_events,
)
from usage_demo.natsserver import NatsServer

MAX_PAYLOAD = 2048
STREAM_MAX_MSG = 1200


@pytest.fixture
def small_server(tmp_path: Path, nats_server_binary: str) -> Iterator[NatsServer]:
    """A server whose max_payload is 2 KiB."""
    server = NatsServer(
        tmp_path / "nats-small",
        binary=nats_server_binary,
        config_text=f"max_payload: {MAX_PAYLOAD}\n",
    )
    server.start()
    yield server
    server.stop()


async def _write_sized(path: Path, payload_size: int) -> str:
    """One event whose encoded payload is ``payload_size`` bytes."""
    args = usage_args(0)
    async with Outbox(path) as outbox:
        base = len((await _probe_size(args)).encode())
        args["metadata"] = {"blob": "x" * (payload_size - base - len(',"blob":""'))}
        event_id = await outbox.record(**args)
    (row,) = [r for r in outbox_rows(path) if r["event_id"] == event_id]
    assert len(row["payload"]) == payload_size
    return event_id


async def _probe_size(args: dict[str, object]) -> str:
    from outbox.contract import build_usage_event

    return build_usage_event(**args).payload.decode()  # type: ignore[arg-type]


async def test_oversize_and_rejected_rows_go_dead_while_the_rest_ships_and_requeue_works(
    outbox_path: Path,
    small_server: NatsServer,
    run_shipper: ShipperRunner,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nc = await nats.connect(small_server.url)
    try:  # an operator's stream that refuses messages over 1200 bytes (a 400 per message)
        await nc.jetstream().add_stream(
            StreamConfig(
                name=DEFAULT_STREAM,
                subjects=["billing.usage.recorded.*"],
                max_msg_size=STREAM_MAX_MSG,
            )
        )
    finally:
        await nc.close()
    good = await write_events(outbox_path, 40)
    rejected = await _write_sized(outbox_path, 1500)  # under max_payload, over the stream's
    # payload alone fits max_payload (nats-py would send it), with headers it does not:
    oversize = await _write_sized(outbox_path, MAX_PAYLOAD - 20)
    good += await write_events(outbox_path, 40)

    stats = await run_shipper.run(shipper_config(outbox_path, small_server.url))

    assert set(msg_ids(await read_stream(small_server.url))) == set(good)
    assert stats.dead == 2 and stats.published == 80
    assert stats.connections == 1  # the server never closed the connection on us
    dead = {r["event_id"]: r for r in outbox_rows(outbox_path)}
    assert set(dead) == {rejected, oversize}
    assert all(r["state"] == "dead" for r in dead.values())
    assert "max_payload" in dead[oversize]["last_error"]
    assert "400" in dead[rejected]["last_error"]
    assert "size exceeds" in dead[rejected]["last_error"]

    # the operator commands: `dead list` as an operator runs it, the rest through main()
    env = shipper_env(USAGE_OUTBOX_URL=str(outbox_path))
    listing = run_cli("dead", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert rejected in listing.stdout and oversize in listing.stdout
    assert "max_payload" in listing.stdout and "size exceeds" in listing.stdout
    database = ["--database-url", str(outbox_path)]
    assert await _cli(["status", *database]) == 0
    status = capsys.readouterr().out
    assert "dead                2" in status and "pending             0" in status

    rejected_id = dead[rejected]["id"]
    assert await _cli(["dead", "requeue", str(rejected_id), *database]) == 0
    assert "requeued 1" in capsys.readouterr().out
    states = {r["event_id"]: (r["state"], r["attempts"]) for r in outbox_rows(outbox_path)}
    assert states == {rejected: ("pending", 0), oversize: ("dead", 0)}

    assert await _cli(["dead", "requeue", "--all", *database]) == 0
    assert "requeued 1" in capsys.readouterr().out
    assert outbox_counts(outbox_path) == {"pending": 2, "dead": 0}
    assert await _cli(["dead", "requeue", *database]) == 2
    assert "--all" in capsys.readouterr().err

    # requeued, they are tried again, and (being what they are) come back to dead
    again = await run_shipper.run(shipper_config(outbox_path, small_server.url))
    assert again.dead == 2 and again.published == 0
    assert outbox_counts(outbox_path) == {"pending": 0, "dead": 2}


async def _cli(argv: list[str]) -> int:
    """``usage-shipper`` in-process (its own event loop, in a thread), leaving the root
    logger as it found it (the CLI installs its own handler)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return await asyncio.to_thread(main, argv, {})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _corrupt(path: Path, row_id: int, **columns: object) -> None:
    sets = ", ".join(f"{name} = ?" for name in columns)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"UPDATE usage_outbox SET {sets} WHERE id = ?", (*columns.values(), row_id))


CORRUPTIONS: dict[str, tuple[dict[str, object], str]] = {
    # name: (what the row is changed to, a word the reason must hold)
    "headers not json": ({"headers": "{not json"}, "not JSON"),
    "headers without msg id": (
        {"headers": '{"event_type":"billing.usage.recorded"}'},
        "Nats-Msg-Id",
    ),
    "headers not strings": ({"headers": '{"Nats-Msg-Id": 5}'}, "strings"),
    "payload not the envelope": ({"payload": b"hello"}, "payload"),
    "payload truncated": ({"payload_cut": 30}, "payload"),
    "subject elsewhere": ({"subject": "other.usage.recorded.gpt-4"}, "subject"),
    "subject with two tokens": ({"subject": "billing.usage.recorded.gpt-4.1"}, "subject"),
    "subject with empty token": ({"subject": "billing.usage.recorded."}, "subject"),
    "subject with wildcard": ({"subject": "billing.usage.recorded.*"}, "subject"),
    "header name not a token": ({"extra_header": ("bad name", "x")}, "header"),
    "header name with colon": ({"extra_header": ("X:Y", "x")}, "header"),
    "header value with newline": ({"extra_header": ("X-Note", "a\r\nPUB evil 1")}, "header"),
    "header value not unicode": ({"extra_header": ("X-Note", "\ud800")}, "header"),
}


async def test_corrupted_rows_each_go_dead_with_a_reason(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    ids = await write_events(outbox_path, 3 * len(CORRUPTIONS) + 1)
    rows = outbox_rows(outbox_path)
    victims: dict[str, str] = {}
    for n, (name, (change, _word)) in enumerate(CORRUPTIONS.items()):
        row = rows[3 * n + 1]  # neighbours on both sides stay intact
        victims[row["event_id"]] = name
        change = dict(change)
        if "payload_cut" in change:
            change["payload"] = row["payload"][: int(change.pop("payload_cut"))]  # type: ignore[call-overload]
        if "extra_header" in change:
            key, value = change.pop("extra_header")  # type: ignore[misc]
            headers = json.loads(row["headers"])
            headers[key] = value
            change["headers"] = json.dumps(headers)
        _corrupt(outbox_path, row["id"], **change)

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url, batch_size=10))

    shipped = set(msg_ids(await read_stream(nats_server.url)))
    assert shipped == set(ids) - set(victims)
    left = {r["event_id"]: r for r in outbox_rows(outbox_path)}
    assert set(left) == set(victims)
    for event_id, row in left.items():
        name = victims[event_id]
        word = CORRUPTIONS[name][1]
        assert row["state"] == "dead", name
        assert word.lower() in row["last_error"].lower(), (name, row["last_error"])
    assert stats.dead == len(CORRUPTIONS)
    assert stats.connections == 1


async def test_parse_payloads_catches_damage_inside_the_envelope(
    outbox_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    ids = await write_events(outbox_path, 5)
    row = outbox_rows(outbox_path)[2]
    damaged = row["payload"].replace(b'"user_id":', b'"user_id":,', 1)
    _corrupt(outbox_path, row["id"], payload=damaged)

    stats = await run_shipper.run(shipper_config(outbox_path, nats_server.url, parse_payloads=True))

    assert stats.dead == 1
    assert set(msg_ids(await read_stream(nats_server.url))) == set(ids) - {row["event_id"]}
    (dead,) = outbox_rows(outbox_path)
    assert "not UTF-8 JSON" in dead["last_error"]
