"""A batch the database refused, applied again one message per transaction.

The batch's statements cannot fail for a reason that belongs to one message (the decoder
and the pricing limits refused those already), so a failed batch is a database problem:
it is applied again message by message, so that one bad message cannot hold back the
others. A message that still fails is retried (``nak`` with a delay) until it has had
``max_deliveries`` deliveries, then parked in ``rejected_events`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from billing.items import Item, Outcome, Rejection, Usage

logger = logging.getLogger("billing.consumer")

#: Applies items in one transaction of its own and returns their outcomes, in order.
Transaction = Callable[[Sequence[Item]], Awaitable[list[Outcome]]]


async def apply_or_fall_back(
    transaction: Transaction, items: Sequence[Item], *, max_deliveries: int
) -> list[Outcome]:
    """``transaction(items)``; if it raises, each item in a transaction of its own."""
    try:
        return await transaction(items)
    except Exception as exc:
        if len(items) == 1:
            return [await _failed(transaction, items[0], exc, max_deliveries)]
        logger.warning(
            "batch of %d failed (%r); applying one by one",
            len(items),
            exc,
            extra={"action": "batch_failed"},
        )
    outcomes = []
    for item in items:
        try:
            outcomes.extend(await transaction([item]))
        except Exception as exc:
            outcomes.append(await _failed(transaction, item, exc, max_deliveries))
    return outcomes


async def _failed(
    transaction: Transaction, item: Item, exc: Exception, max_deliveries: int
) -> Outcome:
    """One message could not be stored: retry later, or park it after enough tries."""
    delivery = item.delivery
    logger.warning(
        "message %s seq %d (delivery %d) not stored: %r",
        delivery.stream,
        delivery.stream_seq,
        delivery.deliveries,
        exc,
        extra={"action": "message_failed"},
    )
    if delivery.deliveries < max_deliveries:
        return Outcome.RETRY
    payload = item.payload
    event_id = item.record.event_id if isinstance(item, Usage) else item.event_id
    reason = f"not stored after {delivery.deliveries} deliveries: {type(exc).__name__}: {exc}"
    parked = Rejection(delivery, payload, reason[:2000], event_id=event_id)
    try:
        return (await transaction([parked]))[0]
    except Exception as park_exc:
        logger.error(
            "could not park message seq %d: %r",
            delivery.stream_seq,
            park_exc,
            extra={"action": "park_failed"},
        )
        return Outcome.RETRY
