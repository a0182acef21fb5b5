"""Reading and poking the broker, the outbox and the logs from outside, for the fault
scenarios (the workspace, :mod:`bench.faults.harness`, starts the processes).

* :func:`stream_info`: a stream's info through any reachable node, or None while JetStream
  does not answer (a leader election).
* :func:`publish_as_shipper`: publish outbox rows the way the shipper does (subject,
  stored headers, exact payload), to leave the broker as a shipper that died after its
  PubAcks and before its delete would.
* :func:`billing_counters`: the counters the billing consumer logs when it stops.
* :func:`outbox_sql`: run SQL on the outbox through a plain ``sqlite3`` connection, as an
  operator (or a bad restore) would.
* :func:`consumer_deliveries`: deliveries made by billing's durable consumer.
* :func:`count_lines`, :func:`in_flight_recoveries`: what a process's log says.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js.api import StreamInfo

from outbox.stream_spec import DEFAULT_STREAM


async def _stream_info(urls: Sequence[str], stream: str, wait: float) -> StreamInfo | None:
    async def quiet(_exc: Exception) -> None:
        return None

    try:
        nc = await nats.connect(
            servers=list(urls),
            connect_timeout=1,
            max_reconnect_attempts=1,
            allow_reconnect=False,
            error_cb=quiet,
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return None
    try:
        return await nc.jetstream(timeout=wait).stream_info(stream)
    except (nats.errors.Error, TimeoutError):  # 503 during an election, no responders
        return None
    finally:
        await nc.close()


def stream_info(
    urls: Sequence[str], stream: str = DEFAULT_STREAM, timeout: float = 1.0
) -> StreamInfo | None:
    return asyncio.run(_stream_info(urls, stream, timeout))


def stream_messages(urls: Sequence[str], stream: str = DEFAULT_STREAM) -> int:
    info = stream_info(urls, stream)
    return 0 if info is None else int(info.state.messages)


async def stream_messages_async(urls: Sequence[str], stream: str = DEFAULT_STREAM) -> int:
    info = await _stream_info(urls, stream, 1.0)
    return 0 if info is None else int(info.state.messages)


async def _publish(urls: Sequence[str], rows: Sequence[sqlite3.Row]) -> list[bool]:
    nc = await nats.connect(servers=list(urls), connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        duplicates = []
        for row in rows:
            headers = json.loads(row["headers"])
            ack = await js.publish(row["subject"], bytes(row["payload"]), headers=headers)
            duplicates.append(bool(ack.duplicate))
        return duplicates
    finally:
        await nc.close()


def publish_as_shipper(urls: Sequence[str], rows: Sequence[sqlite3.Row]) -> list[bool]:
    """Publish ``rows`` (from :func:`outbox_rows`) exactly as the shipper would; return
    whether each PubAck said duplicate."""
    return asyncio.run(_publish(urls, rows))


def outbox_sql(path: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    """Run one statement on the outbox file (committed); return the rows it produced."""
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


def outbox_rows(path: Path, where: str = "1=1", *params: Any) -> list[sqlite3.Row]:
    return outbox_sql(path, f"SELECT * FROM usage_outbox WHERE {where} ORDER BY id", *params)


_COUNTER = re.compile(r"([a-z][a-z ]*) (\d+)")


def billing_counters(log: str) -> dict[str, int]:
    """The consumer's counters from its "stopped: received 8, billed 7, ..." log lines
    (summed over every run in ``log``: a restarted consumer starts from zero)."""
    totals: dict[str, int] = {}
    for line in log.splitlines():
        if "stopped: received " not in line:
            continue
        for name, value in _COUNTER.findall(line.split("stopped: ", 1)[1]):
            key = name.strip().replace(" ", "_")
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def consumer_deliveries(
    nats_url: str, stream: str = DEFAULT_STREAM, durable: str = "billing"
) -> tuple[int, int]:
    """(deliveries made, last stream sequence delivered) of billing's durable consumer:
    the difference is the number of redeliveries."""
    import nats

    async def read() -> tuple[int, int]:
        client = await nats.connect(nats_url, connect_timeout=2)
        try:
            info = await client.jetstream().consumer_info(stream, durable)
            return int(info.delivered.consumer_seq or 0), int(info.delivered.stream_seq or 0)
        finally:
            await client.close()

    return asyncio.run(read())


def count_lines(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def in_flight_recoveries(shipper_log: str) -> tuple[int, int]:
    """(restarts that found rows in flight, rows counted) from a shipper's log."""
    found = [int(n) for n in re.findall(r"stopped with (\d+) rows in flight", shipper_log)]
    return len(found), sum(found)
