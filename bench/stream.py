"""The benchmarks' stream, as the shipper creates it, and what JetStream says of it."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from outbox.stream_spec import DEFAULT_STREAM_SUBJECTS, OWN_SUBJECTS
from shipper.config import ShipperConfig

DEFAULTS = ShipperConfig()


STREAM = DEFAULTS.stream


#: The longest any single wait in the bench may take; what is missing by then is "lost".
TIMEOUT = 15.0


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def rfc3339_seconds(text: str) -> float:
    """Unix seconds of an RFC 3339 time with up to nanosecond digits (nats-server's ``*_ts``;
    ``datetime.fromisoformat`` stops at microseconds)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    zone = "+00:00" if match[3] == "Z" else match[3]
    whole = datetime.fromisoformat(match[1] + zone).timestamp()
    return whole + int((match[2] or "0")[:9].ljust(9, "0")) / 1e9


async def create_stream(admin: Client, *, batched: bool = True) -> None:
    """The stream as ``shipper.stream.ensure_stream`` creates it, so the shipper adopts it
    (``batched=False``: as an operator's stream without ``allow_batched``)."""
    await admin.jetstream().add_stream(
        StreamConfig(
            name=STREAM,
            subjects=list(DEFAULT_STREAM_SUBJECTS),
            storage=StorageType.FILE,
            num_replicas=DEFAULTS.replicas,
            duplicate_window=DEFAULTS.duplicate_window,
            max_age=DEFAULTS.stream_max_age,
            allow_batched=batched,
        )
    )


async def set_batched(admin: Client, batched: bool) -> None:
    js = admin.jetstream()
    config = (await js.stream_info(STREAM)).config
    config.allow_batched = batched
    await js.update_stream(config)


async def purge(admin: Client) -> None:
    await admin.jetstream().purge_stream(STREAM)


@dataclass
class StreamState:
    messages: int
    first_ts: float  # when the first message now in the stream was stored
    last_ts: float


async def stream_state(admin: Client) -> StreamState:
    # The raw API answer: nats-py's StreamState drops first_ts / last_ts.
    reply = await admin.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=TIMEOUT)
    state = json.loads(reply.data)["state"]
    return StreamState(
        messages=state["messages"],
        first_ts=rfc3339_seconds(state["first_ts"]),
        last_ts=rfc3339_seconds(state["last_ts"]),
    )


async def wait_for_messages(admin: Client, count: int) -> int:
    """Wait (at most TIMEOUT) until the stream holds ``count`` messages; return how many."""
    for _ in range(int(TIMEOUT / 0.05)):
        have = (await stream_state(admin)).messages
        if have >= count:
            break
        await asyncio.sleep(0.05)
    return have


async def read_stream(admin: Client, count: int) -> dict[str, tuple[float, float]]:
    """event_id -> (stored, written) for the first ``count`` messages of the stream."""
    js = admin.jetstream()
    sub = await js.subscribe(OWN_SUBJECTS, ordered_consumer=True)
    seen: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(count):
            try:
                msg = await sub.next_msg(timeout=TIMEOUT)
            except TimeoutError:
                break
            event_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            written = rfc3339_seconds(json.loads(msg.data)["timestamp"])
            seen[event_id] = (msg.metadata.timestamp.timestamp(), written)
    finally:
        await sub.unsubscribe()
    return seen
