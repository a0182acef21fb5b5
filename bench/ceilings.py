"""Raw JetStream publishing, no database: the ceilings the shipper is measured against.

nats-py's ``js.publish_async``; a lean pipelined publisher (plain ``nc.publish``, one
wildcard subscription collecting PubAcks, read with the shipper's own classifier);
fast-ingest batches of pre-built HPUB frames; sequential ``await js.publish``; and the
legacy connect-publish-close per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.stream import TIMEOUT
from bench.workload import Message
from shipper import frames
from shipper.publisher import Message as PublisherMessage
from shipper.publisher import Outcome, classify
from usage_runtime import wire

perf = time.perf_counter


@dataclass
class Rate:
    events: int  # messages attempted
    seconds: float
    lost: int = 0  # no answer within the timeout
    errors: int = 0  # answered with an error (or not as a new message)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.errors == 0


def budget(count: int) -> float:
    """An overall deadline for publishing ``count`` messages: generous (1,000/s at least),
    and one timer for the whole loop, not one per message."""
    return TIMEOUT + count / 1000


async def bench_publish_async(url: str, messages: list[Message], window: int) -> Rate:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=window)
        futures: list[asyncio.Future[Any]] = []
        gc.collect()
        start = perf()
        # No wait_stall: it wraps every semaphore acquire in asyncio.wait_for (a task per
        # message in Python 3.11) and would lower the ceiling by two thirds. One deadline
        # around the whole loop keeps futures that never resolve (nats.py issue 985) from
        # hanging the run: they hold the window, the loop stalls, the deadline ends it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for subject, payload, headers in messages:
                    futures.append(await js.publish_async(subject, payload, headers=headers))
                await js.publish_async_completed()
        elapsed = perf() - start
        lost = len(messages) - sum(1 for f in futures if f.done())
        errors = 0
        for future in futures:
            if not future.done():
                future.cancel()
            elif future.exception() is not None or future.result().duplicate:
                errors += 1
        return Rate(len(messages), elapsed, lost=lost, errors=errors)
    finally:
        await nc.close()


class _LeanAcks:
    """PubAck bookkeeping for the lean publisher: counts, and wake-ups for the window."""

    def __init__(self, total: int, window: int) -> None:
        self.total = total
        self.low_water = window // 2
        self.in_flight = 0
        self.answered = 0
        self.errors = 0
        self.room = asyncio.Event()
        self.done = asyncio.Event()

    async def on_ack(self, msg: Msg) -> None:
        self.in_flight -= 1
        self.answered += 1
        # The shipper's own reading of a PubAck: anything but a new message is an error here.
        if classify(msg).outcome is not Outcome.STORED:
            self.errors += 1
        if self.in_flight <= self.low_water:
            self.room.set()
        if self.answered == self.total:
            self.done.set()


async def bench_lean(url: str, messages: list[Message], window: int) -> Rate:
    nc = await nats.connect(url)
    try:
        prefix = nc.new_inbox()
        acks = _LeanAcks(len(messages), window)
        await nc.subscribe(
            f"{prefix}.*", cb=acks.on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        gc.collect()
        start = perf()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for index, (subject, payload, headers) in enumerate(messages):
                    if acks.in_flight >= window:
                        acks.room.clear()
                        await acks.room.wait()
                    acks.in_flight += 1
                    await nc.publish(subject, payload, reply=f"{prefix}.{index}", headers=headers)
                await acks.done.wait()
        elapsed = perf() - start
        return Rate(len(messages), elapsed, lost=len(messages) - acks.answered, errors=acks.errors)
    finally:
        await nc.close()


class _FastAcks:
    """Final PubAcks of fast-ingest batches: how many batches are open, what they stored."""

    def __init__(self, batches: int, open_at_most: int) -> None:
        self.remaining = batches
        self.open = 0
        self.open_at_most = open_at_most
        self.stored = 0
        self.errors = 0
        self.room = asyncio.Event()
        self.done = asyncio.Event()

    async def on_reply(self, msg: Msg) -> None:
        data = msg.data
        if data.startswith(b'{"type":"ack"'):
            return  # flow acks: a batch of 1,000 fits in the window, nothing waits on them
        if data.startswith(b'{"type":') or b'"error"' in data:
            self.errors += 1
            return
        self.stored += json.loads(data)["count"]
        self.open -= 1
        self.remaining -= 1
        if self.open < self.open_at_most:
            self.room.set()
        if self.remaining == 0:
            self.done.set()


async def bench_fast_ingest(
    url: str, messages: list[Message], *, batch: int, flow: int, open_at_most: int = 2
) -> Rate:
    """Fast-ingest batches of ``batch`` messages (gap = fail, ``flow`` asked), HPUB frames
    built before the clock starts and written ``batch`` at a time into nats-py's buffer
    (``shipper.frames``), ``open_at_most`` batches unanswered at once (the shipper has two
    when one is claimed while the other waits). The ceiling for the shipper's fast path:
    no database, no per-row work."""
    nc = await nats.connect(url)
    try:
        prefix = nc.new_inbox()
        # Batch ids are the stream's (see shipper.fastingest): a random part per run, so
        # no batch of an earlier run left open could take ours for its continuation.
        base = secrets.token_hex(8)
        chunks: list[list[bytes]] = []
        for number, first in enumerate(range(0, len(messages), batch)):
            part = messages[first : first + batch]
            reply = f"{prefix}.{base}{number}.{flow}.fail."
            chunks.append(
                [
                    frames.hpub_frame(
                        PublisherMessage(subject, payload, headers),
                        f"{reply}{i}.{0 if i == 1 else 2 if i == len(part) else 1}.$FI",
                    )
                    for i, (subject, payload, headers) in enumerate(part, 1)
                ]
            )
        acks = _FastAcks(len(chunks), open_at_most)
        await nc.subscribe(
            f"{prefix}.>", cb=acks.on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        gc.collect()
        start = perf()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for chunk in chunks:
                    if acks.open >= open_at_most:
                        acks.room.clear()
                        await acks.room.wait()
                    acks.open += 1
                    await wire.write_frames(nc, chunk)
                await acks.done.wait()
        elapsed = perf() - start
        return Rate(
            len(messages),
            elapsed,
            lost=len(messages) - acks.stored - acks.errors,
            errors=acks.errors,
        )
    finally:
        await nc.close()


async def bench_sequential(url: str, messages: list[Message]) -> Rate:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=TIMEOUT)
        errors = 0
        start = perf()
        for subject, payload, headers in messages:
            ack = await js.publish(subject, payload, headers=headers)
            errors += bool(ack.duplicate)
        return Rate(len(messages), perf() - start, errors=errors)
    finally:
        await nc.close()


async def bench_legacy(url: str, messages: list[Message]) -> Rate:
    errors = 0
    start = perf()
    for subject, payload, headers in messages:
        nc = await nats.connect(url)
        try:
            ack = await nc.jetstream(timeout=TIMEOUT).publish(subject, payload, headers=headers)
            errors += bool(ack.duplicate)
        finally:
            await nc.close()
    return Rate(len(messages), perf() - start, errors=errors)
