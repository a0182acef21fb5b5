"""``usage-shipper peek``: print the usage events stored in the stream, read-only.

A newcomer's way to see what reached JetStream without the ``nats`` CLI. Messages are
read one by one by sequence (``STREAM.MSG.GET``): no consumer is created, nothing is
acknowledged or changed, so peeking never disturbs billing's durable consumer. Only
usage subjects are shown (the stream may hold billing's own output too).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import RawStreamMsg
from nats.js.manager import JetStreamManager

from outbox.subject import SUBJECT_PREFIX
from shipper.config import ShipperConfig
from shipper.connection import connect
from shipper.discovery import Discovery
from usage_runtime.signals import sleep_unless_stopped

#: How often ``--follow`` asks the stream for new messages.
FOLLOW_INTERVAL = 0.5


def is_usage(subject: str | None) -> bool:
    return bool(subject) and str(subject).startswith(SUBJECT_PREFIX + ".")


def format_message(message: RawStreamMsg) -> str:
    """``#seq subject time``, the headers, then the payload (JSON pretty-printed when
    it is JSON, else as received)."""
    when = ""
    if isinstance(message.time, datetime.datetime):
        when = "  " + message.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"#{message.seq} {message.subject}{when}"]
    for name, value in (message.headers or {}).items():
        lines.append(f"  {name}: {value}")
    data = message.data or b""
    try:
        body = json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        body = data.decode("utf-8", "replace")
    lines.extend("  " + line for line in body.splitlines())
    return "\n".join(lines)


async def _stream_name(jsm: JetStreamManager, configured: str) -> str:
    """The configured stream, else the one capturing usage subjects (the shipper adopts
    such a stream too)."""
    try:
        await jsm.stream_info(configured)
        return configured
    except nats.js.errors.NotFoundError:
        return str(await jsm.find_stream_name_by_subject(f"{SUBJECT_PREFIX}.peek"))


async def _get(jsm: JetStreamManager, stream: str, seq: int) -> RawStreamMsg | None:
    try:
        return await jsm.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        return None  # deleted or expired


async def peek(
    config: ShipperConfig,
    *,
    last: int,
    follow: bool,
    stop: asyncio.Event,
    show: Callable[[str], None] = print,
) -> int:
    """Show the last ``last`` usage events, then (``follow``) new ones until ``stop``;
    returns how many were shown."""
    servers = await Discovery(config).servers()
    client: Client = await connect(config, servers, asyncio.Event())
    shown = 0
    try:
        jsm = client.jsm(timeout=config.publish_timeout)
        stream = await _stream_name(jsm, config.stream)
        state = (await jsm.stream_info(stream)).state
        # Walk back from the end until ``last`` usage events are found.
        found: list[RawStreamMsg] = []
        seq = state.last_seq
        while len(found) < last and seq >= max(1, state.first_seq):
            message = await _get(jsm, stream, seq)
            if message is not None and is_usage(message.subject):
                found.append(message)
            seq -= 1
        for message in reversed(found):
            show(format_message(message))
            shown += 1
        if not found:
            show(f"(no usage events in stream {stream})")
        next_seq = state.last_seq + 1
        while follow and not stop.is_set():
            last_seq = (await jsm.stream_info(stream)).state.last_seq
            for seq in range(next_seq, last_seq + 1):
                message = await _get(jsm, stream, seq)
                if message is not None and is_usage(message.subject):
                    show(format_message(message))
                    shown += 1
            next_seq = max(next_seq, last_seq + 1)
            await sleep_unless_stopped(stop, FOLLOW_INTERVAL)
    except (nats.errors.Error, TimeoutError) as exc:
        raise OSError(f"cannot read the stream: {exc!r}") from exc
    finally:
        await client.close()
    return shown
