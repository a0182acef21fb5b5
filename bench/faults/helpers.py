"""Helpers for scenarios 4, 7, 8, 9 and 10 beyond :mod:`bench.faults.harness`.

* :func:`shipper_proc`: ``python -m shipper run`` with flags the harness does not pass
  (``--replicas``, ``--consul-host``, ``--duplicate-window``, ``--parse-payloads``...).
* :func:`stream_info`: a stream's info through any reachable node, or None while JetStream
  does not answer (a leader election).
* :func:`publish_as_shipper`: publish outbox rows the way the shipper does (subject,
  stored headers, exact payload), to leave the broker as a shipper that died after its
  PubAcks and before its delete would.
* :func:`billing_counters`: the counters the billing consumer logs when it stops.
* :func:`outbox_sql`: run SQL on the outbox through a plain ``sqlite3`` connection, as an
  operator (or a bad restore) would.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js.api import StreamInfo

from bench.faults.harness import SHIPPER_DEFAULTS, Proc, Workspace, _settings_env, clean_env
from outbox.stream_spec import DEFAULT_STREAM


def shipper_proc(
    ws: Workspace,
    nats_url: str,
    *,
    flags: Sequence[str] = (),
    name: str = "shipper",
    start: bool = True,
    **settings: object,
) -> Proc:
    """The shipper CLI on ``ws``'s outbox with extra command-line ``flags``; keywords are
    ``SHIPPER_*`` settings over the harness defaults."""
    env = clean_env(NATS_URL=nats_url, USAGE_OUTBOX_URL=str(ws.outbox_path))
    env.update(_settings_env("SHIPPER_", {**SHIPPER_DEFAULTS, **settings}))
    proc = ws.proc(name, [sys.executable, "-m", "shipper", "run", *flags], env)
    return proc.start() if start else proc


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
