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
from usage_runtime import wire

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
    """``ack`` / ``term`` / ``nak`` each message by its outcome, then flush once.

    The acks and terms of a batch go out as protocol frames in one buffer append
    (:mod:`usage_runtime.wire`: 0.15 us a message against ``Msg.ack()``'s 1.6 us,
    measured); a ``nak`` with its delay (rare) goes through nats-py.
    """

    async def settle(
        self,
        nc: NatsClient | None,
        messages: Sequence[Msg],
        outcomes: Sequence[Outcome],
        *,
        retry_delay: float,
    ) -> None:
        replies: list[tuple[str, bytes]] = []  # (reply subject, payload): acks and terms
        for message, outcome in zip(messages, outcomes, strict=True):
            try:
                if message.is_acked:  # settled already (a wrapping settler did): as nats-py
                    raise nats.errors.MsgAlreadyAckdError(message)
                if outcome is Outcome.RETRY:
                    await message.nak(delay=retry_delay)
                elif nc is None or not message.reply:
                    await (message.ack() if outcome in ACKED else message.term())
                else:
                    replies.append((message.reply, _ACK if outcome in ACKED else _TERM))
            except nats.errors.Error as exc:
                logger.warning("ack failed: %r", exc, extra={"action": "ack_failed"})
        if nc is None:
            return
        try:
            await _send(nc, replies)
            await nc.flush(timeout=int(FLUSH_TIMEOUT))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("acks not confirmed: %r", exc, extra={"action": "ack_flush_failed"})


#: The payloads ``Msg.ack()`` and ``Msg.term()`` send.
_ACK: Final = b""
_TERM: Final = b"+TERM"


async def _send(nc: NatsClient, replies: Sequence[tuple[str, bytes]]) -> None:
    """Publish each payload to its reply subject: as frames in one append, or (a nats-py
    without the private buffer) one ``publish`` each."""
    if not replies:
        return
    if wire.has_private_api(nc):
        frames = [b"PUB %b %d\r\n%b\r\n" % (r.encode(), len(p), p) for r, p in replies]
        await wire.write_frames(nc, frames)
        return
    for reply, payload in replies:
        await nc.publish(reply, payload)
