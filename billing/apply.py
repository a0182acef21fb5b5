"""Applying a batch of decoded deliveries to the ledger, in one transaction.

The heart is :func:`apply_batch`: a batch of decoded deliveries applied inside the
caller's transaction with a handful of set-based statements:

1. ``INSERT INTO billing_records ... ON CONFLICT DO NOTHING RETURNING idempotency_key``:
   the inbox, keyed on ``UsageRecord.key`` (the payload's ``idempotency_key``, else its
   ``event_id``). Only the events that come back are new; every other one is a duplicate
   and changes nothing below. Two consumers racing on one event are settled here too.
2. ``INSERT INTO wallets ... ON CONFLICT (user_id) DO UPDATE SET balance = balance + delta``
   once per user of the batch (in user order, so two PostgreSQL consumers lock wallets in
   the same order and cannot deadlock).
3. ``INSERT INTO wallet_transactions``: one debit per newly billed event.
4. ``INSERT INTO rejected_events ... ON CONFLICT DO NOTHING``: the refused deliveries.

Each is one statement per batch handed straight to the driver (:mod:`billing.batch_insert`).

Statements 1-4 cannot fail for a reason that belongs to one message: the decoder and the
pricing limits have already refused anything a column could not hold. A failure here is a
database problem and rolls back the batch; the consumer then retries message by message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.batch_insert import CHUNK, insert_rows
from billing.decode import TOP_LEVEL_IDS
from billing.items import Item, Outcome, Rejection, Usage, naive_utc, utcnow
from billing.ledger import insert_debits, update_wallets
from billing.pricing import PricingError, compute_charge
from billing.schema import BILLED, DEBIT, UNPRICED, billing_records, prices, rejected_events


async def apply_batch(
    conn: AsyncConnection, items: Sequence[Item], *, now: datetime | None = None
) -> list[Outcome]:
    """Apply ``items`` in the caller's transaction; return one outcome per item, in order.

    The caller commits, and acknowledges the messages only after the commit.
    """
    now = naive_utc(now) if now else utcnow()
    outcomes: list[Outcome | None] = [None] * len(items)

    # The first copy of a key in the batch is the candidate; later copies are dupes.
    candidates: dict[str, int] = {}
    for index, item in enumerate(items):
        if isinstance(item, Usage):
            if item.key in candidates:
                outcomes[index] = Outcome.DUPLICATE
            else:
                candidates[item.key] = index

    products = {item.record.product_id for item in items if isinstance(item, Usage)}
    price_of = await _prices_for(conn, products)
    rejections: list[tuple[int, Rejection]] = [
        (i, item) for i, item in enumerate(items) if isinstance(item, Rejection)
    ]
    record_rows: list[dict[str, Any]] = []
    for key, index in candidates.items():
        usage = items[index]
        assert isinstance(usage, Usage)
        record = usage.record
        # An event keyed by its delivery is recorded under that key: its own id (if any)
        # is not unique, and the ledger refers to records by event_id.
        event_id = key if record.keyed_by_delivery else record.event_id
        unit_price = price_of.get((record.product_id, record.unit_type))
        charge: Decimal | None = None
        if unit_price is not None:
            try:
                charge = compute_charge(record.usage_amount, unit_price)
            except PricingError as exc:
                rejection = Rejection(usage.delivery, usage.payload, str(exc), event_id=event_id)
                rejections.append((index, rejection))
                continue
        record_rows.append(
            {
                "event_id": event_id,
                "user_id": record.user_id,
                "product_id": record.product_id,
                "unit_type": record.unit_type,
                "usage_amount": record.usage_amount,
                "state": BILLED if charge is not None else UNPRICED,
                "unit_price": unit_price if charge is not None else None,
                "charge": charge,
                "event_time": naive_utc(record.timestamp),
                "received_at": now,
                "stream_seq": usage.delivery.stream_seq,
                "idempotency_key": key,
                "payload_event_id": (record.event_id or None) if record.keyed_by_delivery else None,
                **{name: record.ids.get(name) for name in TOP_LEVEL_IDS},
            }
        )

    # In key order: two PostgreSQL consumers inserting overlapping batches then wait
    # on each other's unique-index entries in the same order and cannot deadlock.
    record_rows.sort(key=lambda row: str(row["idempotency_key"]))
    inserted = await _insert_records(conn, record_rows)
    deltas: dict[str, Decimal] = {}
    debits: list[dict[str, Any]] = []
    for row in record_rows:
        index = candidates[row["idempotency_key"]]
        if row["idempotency_key"] not in inserted:
            outcomes[index] = Outcome.DUPLICATE
            continue
        user = row["user_id"]
        deltas.setdefault(user, Decimal(0))
        if row["charge"] is None:
            outcomes[index] = Outcome.UNPRICED
            continue
        outcomes[index] = Outcome.BILLED
        deltas[user] -= row["charge"]
        debits.append(
            {
                "user_id": user,
                "event_id": row["event_id"],
                "kind": DEBIT,
                "amount": -row["charge"],
                "created_at": now,
            }
        )
    await update_wallets(conn, deltas, now)
    await insert_debits(conn, debits)

    await _insert_rejections(conn, [r for _, r in rejections], now)
    for index, _ in rejections:
        outcomes[index] = Outcome.REJECTED

    assert all(o is not None for o in outcomes), "every item gets an outcome"
    return [o for o in outcomes if o is not None]


async def _prices_for(
    conn: AsyncConnection, product_ids: set[str]
) -> dict[tuple[str, str], Decimal]:
    found: dict[tuple[str, str], Decimal] = {}
    ids = sorted(product_ids)
    for start in range(0, len(ids), CHUNK):
        result = await conn.execute(
            sa.select(prices.c.product_id, prices.c.unit_type, prices.c.unit_price).where(
                prices.c.product_id.in_(ids[start : start + CHUNK])
            )
        )
        for product_id, unit_type, unit_price in result:
            found[(product_id, unit_type)] = unit_price
    return found


async def _insert_records(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the rows that are new; return their keys (one statement per batch)."""
    if not rows:
        return set()
    # No conflict target: a clash on the key or on event_id is a duplicate alike.
    tail = "ON CONFLICT DO NOTHING RETURNING idempotency_key"
    return set(await insert_rows(conn, billing_records, tuple(rows[0]), rows, tail))


async def _insert_rejections(
    conn: AsyncConnection, rejections: Sequence[Rejection], now: datetime
) -> None:
    rows = []
    for rejection in rejections:
        payload = rejection.payload
        rows.append(
            {
                "stream": rejection.delivery.stream,
                "stream_seq": rejection.delivery.stream_seq,
                "subject": rejection.delivery.subject,
                "payload": payload,
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
                "reason": rejection.reason,
                "event_id": rejection.event_id,
                "deliveries": rejection.delivery.deliveries,
                "received_at": now,
            }
        )
    if not rows:
        return
    tail = "ON CONFLICT (stream, stream_seq, payload_sha256) DO NOTHING"
    await insert_rows(conn, rejected_events, tuple(rows[0]), rows, tail)
