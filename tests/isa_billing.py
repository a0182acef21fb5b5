"""A stand-in for the platform's real billing service (xenoISA/isA_user ``billing_service``),
written from the measured facts in ``shared/notes/real-ecosystem.md``, not from its code.

What it does, as the real one does:

* On start it asks for a stream named ``billing-stream`` on ``["billing.>"]`` with
  ``max_msgs=100000`` and ignores a refusal of that call; then it creates its durable
  consumer **on the stream named billing-stream**, filtered on ``billing.usage.recorded.>``,
  with deliver policy ``new`` unless told ``all``. No such stream: it receives nothing.
* A payload with ``type``, ``source`` and ``data`` is an envelope; anything else is "raw",
  and its event id is the stream sequence. Headers are not looked at.
* It de-duplicates on ``payload.idempotency_key``, else that event id. The payload's
  ``event_id`` is ignored.
* It reads ``session_id``, ``request_id`` and ``organization_id`` at the top level only.
* It publishes its own ``billing.calculated`` event into ``billing-stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import APIError

STREAM = "billing-stream"
FILTER = "billing.usage.recorded.>"


@dataclass(frozen=True)
class Billed:
    key: str
    user_id: str
    product_id: str
    usage_amount: Any
    unit_type: str
    session_id: str | None
    request_id: str | None
    organization_id: str | None


@dataclass
class IsaLikeBilling:
    nats_url: str
    durable: str = "billing-service"
    deliver_policy: DeliverPolicy = DeliverPolicy.NEW
    billed: list[Billed] = field(default_factory=list)
    seen_keys: set[str] = field(default_factory=set)
    skipped: int = 0
    stream_call_error: str | None = None
    consuming: bool = False
    _nc: Client | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nc = await nats.connect(self.nats_url, connect_timeout=2)
        js = self._nc.jetstream()
        try:
            await js.add_stream(StreamConfig(name=STREAM, subjects=["billing.>"], max_msgs=100000))
        except APIError as exc:  # the real one logs this and goes on
            self.stream_call_error = f"{exc.code}/{exc.err_code} {exc.description}"
        try:
            await js.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name=self.durable,
                    filter_subject=FILTER,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=self.deliver_policy,
                ),
            )
        except APIError:
            return  # no billing-stream: consuming fails, and billing receives nothing
        subscription = await js.pull_subscribe_bind(durable=self.durable, stream=STREAM)
        self.consuming = True
        self._task = asyncio.create_task(self._loop(subscription))

    async def _loop(self, subscription: Any) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        while True:
            try:
                messages = await subscription.fetch(batch=100, timeout=0.5)
            except TimeoutError:
                continue
            for message in messages:
                payload = json.loads(message.data)
                if {"type", "source", "data"} <= set(payload):
                    event_id, data = payload.get("id"), payload["data"]
                else:
                    event_id, data = str(message.metadata.sequence.stream), payload
                key = data.get("idempotency_key") or event_id
                if key in self.seen_keys:
                    self.skipped += 1
                else:
                    self.seen_keys.add(key)
                    self.billed.append(
                        Billed(
                            key=key,
                            user_id=data["user_id"],
                            product_id=data["product_id"],
                            usage_amount=data["usage_amount"],
                            unit_type=data["unit_type"],
                            session_id=data.get("session_id"),
                            request_id=data.get("request_id"),
                            organization_id=data.get("organization_id"),
                        )
                    )
                    await js.publish(
                        "billing.calculated", json.dumps({"key": key}).encode(), stream=STREAM
                    )
                await message.ack()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._nc is not None:
            await self._nc.close()
