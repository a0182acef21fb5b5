"""Seams for tests and the demo of the billing consumer (production does not use them).

:class:`BeforeSettling` is a :class:`~billing.settle.Settler` that awaits a function of
the committed batch before the real acknowledgements: a test naks messages there to force
redeliveries, kills the process to crash between commit and ack, or sets the stop event
to stop mid-batch; the demo notes which replayed events came back as duplicates::

    consumer = BillingConsumer(config, settler=BeforeSettling(crash))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from billing.items import Outcome
from billing.settle import JetStreamSettler

#: Called with the committed batch and its outcomes, before any message is acknowledged.
BatchHook = Callable[[Sequence[Msg], Sequence[Outcome]], Awaitable[None]]


class BeforeSettling(JetStreamSettler):
    """Await ``hook(messages, outcomes)``, then settle as production does."""

    def __init__(self, hook: BatchHook) -> None:
        self.hook = hook

    async def settle(
        self,
        nc: NatsClient | None,
        messages: Sequence[Msg],
        outcomes: Sequence[Outcome],
        *,
        retry_delay: float,
    ) -> None:
        await self.hook(messages, outcomes)
        await super().settle(nc, messages, outcomes, retry_delay=retry_delay)
