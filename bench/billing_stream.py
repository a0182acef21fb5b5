"""bench.billing's stream side: filling the stream as the shipper would, and the raw
pull-and-ack ceiling every billing row is set beside (no database)."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from dataclasses import dataclass, replace

from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.workload import event_args
from billing import jetstream as billing_jetstream
from billing.config import BillingConfig
from outbox import build_usage_event

#: The longest any single wait may take; what has not arrived by then is "lost".
TIMEOUT = 60.0
WINDOW = 4_000  # publishes in flight while filling the stream
perf = time.perf_counter


async def fill(nc: Client, count: int) -> None:
    """Publish ``count`` fresh events as the shipper would, pipelined, all PubAcks checked."""
    inbox = nc.new_inbox()
    answered = errors = 0
    room, done = asyncio.Event(), asyncio.Event()
    in_flight = 0

    async def on_ack(msg: Msg) -> None:
        nonlocal answered, errors, in_flight
        answered += 1
        in_flight -= 1
        if b'"error"' in msg.data or b'"duplicate"' in msg.data:
            errors += 1
        if in_flight < WINDOW // 2:
            room.set()
        if answered == count:
            done.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack, pending_msgs_limit=-1)
    async with asyncio.timeout(TIMEOUT + count / 1_000):
        for i in range(count):
            if in_flight >= WINDOW:
                room.clear()
                await room.wait()
            event = build_usage_event(**event_args(i))
            in_flight += 1
            await nc.publish(
                event.subject, event.payload, reply=f"{inbox}.{i}", headers=event.headers
            )
        await done.wait()
    await sub.unsubscribe()
    if errors:
        raise RuntimeError(f"{errors} of {count} publishes were refused or duplicates")


@dataclass
class Rate:
    events: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def ceiling(nc: Client, config: BillingConfig, stream: str, count: int) -> Rate:
    """nats-py's pull consumer with billing's consumer settings, ack each, no database.
    From the first batch received to the last batch's acks flushed, the first batch not
    counted (as the billing rows count from their first batch)."""
    js = nc.jetstream()
    durable = f"ceiling-{uuid.uuid4().hex[:8]}"
    await js.add_consumer(
        stream, replace(billing_jetstream.consumer_config(config), durable_name=durable)
    )
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    received = counted = 0
    started = 0.0
    gc.collect()
    async with asyncio.timeout(TIMEOUT + count / 500):
        while received < count:
            messages = await sub.fetch(config.batch_size, timeout=5)
            for message in messages:
                await message.ack()
            await nc.flush()
            if received == 0:
                started = perf()
            else:
                counted += len(messages)
            received += len(messages)
    seconds = perf() - started
    await sub.unsubscribe()
    await js.delete_consumer(stream, durable)
    return Rate(counted, seconds)
