"""Fetching batches from the durable pull consumer: one pull request per batch, no task or
timer per message.

nats-py's ``PullSubscription.fetch(n)`` awaits ``next_msg()`` once per message, and each of
those runs ``asyncio.wait_for`` (a task and a timer): on this machine that was most of the
raw pull+ack ceiling's time per message. :class:`BatchPuller` speaks JetStream's pull API
directly (a JSON request on ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, the messages
delivered to a reply inbox) through nats-py's public core API: a callback collects the
messages into a list, and ``fetch`` waits once per batch.

* The first request of a fetch is ``no_wait``: the server sends what it has, up to the
  batch, and a ``404`` status when that is less. Only when nothing came is a lingering
  request (``expires`` = the time left) sent, and the fetch returns as soon as the first
  messages of it arrived: billing's latency is not tied to filling a batch.
* Every request has its own reply subject (``<inbox>.<n>``), so a status message that
  closes an older request (a ``408`` when its ``expires`` ran out) cannot end the
  current one early. Messages of an older request that arrive late are kept and returned
  by the next fetch: they are delivered (ack pending) and must be handled, not dropped.
* A ``409`` "Consumer Deleted" or a ``503`` (no consumer answers the request) raises
  :class:`ConsumerGone`: the consumer sets its durable up again. Other ``409``s (a
  leadership change, too many waiting requests) end the request like a ``404``.
* :meth:`take_unprocessed` hands back what was delivered but not yet returned, so a
  closing consumer can ``nak`` it for another process instead of waiting for ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from billing.errors import BillingError

_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
#: Control messages (idle heartbeats, flow control): not sent for these requests, ignored.
_CONTROL: Final = "100"
#: The consumer is gone, or nothing answers requests for it.
_GONE_STATUSES: Final = frozenset({"503"})
#: Left off the lingering request's ``expires`` so the client gives up just after the server.
_EXPIRES_MARGIN: Final = 0.01


class ConsumerGone(BillingError):
    """The durable consumer was deleted (or its stream): set it up again."""


class BatchPuller:
    """Fetches batches for one durable consumer over one connection."""

    def __init__(self, nc: NatsClient, stream: str, durable: str) -> None:
        self._nc = nc
        self._api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._numbers = itertools.count(1)
        self._sub: Subscription | None = None
        self._ready: list[Msg] = []  # delivered, not yet returned by fetch
        self._arrived = asyncio.Event()
        self._current = ""  # the reply subject of the request being waited on
        self._current_done = False  # its status message came: it will send nothing more
        self._gone: str | None = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                f"{self._inbox}.*",
                cb=self._on_message,
                pending_msgs_limit=-1,  # bounded by the consumer's max_ack_pending
                pending_bytes_limit=-1,
            )

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            await sub.unsubscribe()

    def take_unprocessed(self) -> list[Msg]:
        """The delivered messages no fetch returned yet (the caller now owns them)."""
        taken, self._ready = self._ready, []
        return taken

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self._ready.append(msg)
        elif status == _CONTROL:
            return
        elif msg.subject == self._current:
            self._current_done = True
            description = (headers or {}).get(_DESCRIPTION, "")
            if status in _GONE_STATUSES or "deleted" in description.lower():
                self._gone = f"{status} {description}".strip()
        self._arrived.set()

    async def _request(self, batch: int, *, no_wait: bool, expires: float | None) -> None:
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        if expires is not None:
            request["expires"] = int(expires * 1_000_000_000)
        self._current = f"{self._inbox}.{next(self._numbers)}"
        self._current_done = False
        await self._nc.publish(self._api_subject, json.dumps(request).encode(), self._current)

    async def _wait(self, until: float, *, want: int) -> None:
        """Wait until ``want`` messages are ready, the current request ended, or ``until``."""
        while len(self._ready) < want and not self._current_done and self._gone is None:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _take(self, batch: int) -> list[Msg]:
        taken, self._ready = self._ready[:batch], self._ready[batch:]
        return taken

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        """Up to ``batch`` messages; ``[]`` when none came within ``wait`` seconds.

        Raises :class:`ConsumerGone` when the server says the consumer does not exist.
        """
        if self._sub is None:
            raise BillingError("the puller is not started")
        until = time.monotonic() + wait
        if len(self._ready) < batch:
            await self._request(batch - len(self._ready), no_wait=True, expires=None)
            await self._wait(until, want=batch)
        if self._gone is not None:
            reason, self._gone = self._gone, None
            raise ConsumerGone(f"the durable consumer is gone ({reason})")
        if self._ready:
            return self._take(batch)
        left = until - time.monotonic() - _EXPIRES_MARGIN
        if left <= 0:
            return []
        await self._request(batch, no_wait=False, expires=left)
        await self._wait(until, want=1)
        if self._gone is not None:
            reason, self._gone = self._gone, None
            raise ConsumerGone(f"the durable consumer is gone ({reason})")
        # The first messages of a lingering request come in a burst: give the rest of what
        # is already on the wire one turn of the loop, without waiting for the batch.
        await asyncio.sleep(0)
        return self._take(batch)
