"""Settling a committed batch with JetStream: each message acknowledged by its outcome.

* billed / unpriced / duplicate -> ``ack``;
* rejected (kept in ``rejected_events``) -> ``term``: never redelivered;
* retry (could not be stored) -> ``nak`` with a delay.

The acks are written without waiting, then flushed once for the batch. A lost ack only
means a redelivery, which the inbox absorbs.

The consumer settles through the :class:`Settler` it is given (by default
:class:`JetStreamSettler`): the one place where the batch is committed and nothing is
acknowledged yet. :mod:`billing.testing` wraps it to crash, stop or hold back acks right
there; the demo wraps it to see which replays were absorbed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from billing.items import Outcome

logger = logging.getLogger("billing.settle")

ACKED: Final = frozenset({Outcome.BILLED, Outcome.UNPRICED, Outcome.DUPLICATE})
FLUSH_TIMEOUT: Final = 5.0


class Settler(Protocol):
    """Acknowledges the messages of a batch whose transaction has committed."""

    async def settle(
        self,
        nc: NatsClient | None,
        messages: Sequence[Msg],
        outcomes: Sequence[Outcome],
        *,
        retry_delay: float,
    ) -> None: ...


class JetStreamSettler:
    """``ack`` / ``term`` / ``nak`` each message by its outcome, then flush once."""

    async def settle(
        self,
        nc: NatsClient | None,
        messages: Sequence[Msg],
        outcomes: Sequence[Outcome],
        *,
        retry_delay: float,
    ) -> None:
        for message, outcome in zip(messages, outcomes, strict=True):
            try:
                if outcome in ACKED:
                    await message.ack()
                elif outcome is Outcome.REJECTED:
                    await message.term()
                else:
                    await message.nak(delay=retry_delay)
            except nats.errors.Error as exc:
                logger.warning("ack failed: %r", exc, extra={"action": "ack_failed"})
        if nc is not None:
            try:
                await nc.flush(timeout=int(FLUSH_TIMEOUT))
            except (nats.errors.Error, TimeoutError) as exc:
                logger.warning("acks not confirmed: %r", exc, extra={"action": "ack_flush_failed"})
