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

Each is one statement per batch handed straight to the driver (:mod:`billing.batch_insert`);
on PostgreSQL 1-3 are one statement (:func:`billing.ledger.bill_on_postgresql`: the
server moves the wallets and writes the debits from the rows the insert returned).

The functions are synchronous: the consumer runs a batch's transaction whole in one
thread on SQLite (:mod:`billing.sqlite_thread`) and through ``AsyncConnection.run_sync``
on PostgreSQL.

Statements 1-4 cannot fail for a reason that belongs to one message: the decoder and the
pricing limits have already refused anything a column could not hold. A failure here is a
database problem and rolls back the batch; the consumer then retries message by message.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa

from billing.batch_insert import CHUNK, insert_rows
from billing.decode import TOP_LEVEL_IDS
from billing.items import Item, Outcome, Rejection, Usage, naive_utc, utcnow
from billing.ledger import Charge, bill_on_postgresql, post_charges
from billing.pricing import PricingError, compute_charge
from billing.schema import BILLED, UNPRICED, billing_records, prices, rejected_events
from billing.types import ExactDecimal


def apply_batch(
    conn: sa.Connection, items: Sequence[Item], *, now: datetime | None = None
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
    price_of = _prices_for(conn, products)
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
    # PostgreSQL moves the wallets and writes the debits in the records' statement.
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        inserted = bill_on_postgresql(conn, record_rows, now)
    else:
        inserted = _insert_records(conn, record_rows)
    charges: list[Charge] = []
    for row in record_rows:
        index = candidates[row["idempotency_key"]]
        if row["idempotency_key"] not in inserted:
            outcomes[index] = Outcome.DUPLICATE
            continue
        outcomes[index] = Outcome.UNPRICED if row["charge"] is None else Outcome.BILLED
        charges.append((row["user_id"], row["event_id"], row["charge"]))
    if not postgres:
        post_charges(conn, charges, now)

    _insert_rejections(conn, [r for _, r in rejections], now)
    for index, _ in rejections:
        outcomes[index] = Outcome.REJECTED

    assert all(o is not None for o in outcomes), "every item gets an outcome"
    return [o for o in outcomes if o is not None]


def _prices_for(conn: sa.Connection, product_ids: set[str]) -> dict[tuple[str, str], Decimal]:
    """The prices of ``product_ids`` by ``(product_id, unit_type)``, in one statement per
    :data:`CHUNK` products handed straight to the driver: SQLAlchemy's expanding ``IN``
    was about 1 ms of every batch (measured), for a handful of rows."""
    found: dict[tuple[str, str], Decimal] = {}
    ids = sorted(product_ids)
    price_column = prices.c.unit_price.type
    assert isinstance(price_column, ExactDecimal), "prices.unit_price is an exact decimal"
    postgres = conn.dialect.name == "postgresql"
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        parameters: tuple[Any, ...]
        if postgres:
            sql, parameters = _PRICES_ANY, (chunk,)
        else:
            sql, parameters = _prices_in(len(chunk)), tuple(chunk)
        result = conn.exec_driver_sql(sql, parameters)
        for row in result:
            product_id, unit_type, stored = tuple(row)
            unit_price = price_column.process_result_value(stored, conn.dialect)
            assert unit_price is not None, "prices.unit_price is NOT NULL"
            found[(product_id, unit_type)] = unit_price
    return found


_PRICES_SELECT: Final = "SELECT product_id, unit_type, unit_price FROM prices WHERE product_id"
#: psycopg's placeholder, one array parameter whatever the count.
_PRICES_ANY: Final = f"{_PRICES_SELECT} = ANY(%s)"


@functools.cache
def _prices_in(count: int) -> str:
    """SQLite's form (qmark placeholders), one text per count of products."""
    return f"{_PRICES_SELECT} IN ({', '.join('?' * count)})"


def _insert_records(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the rows that are new; return their keys (one statement per batch)."""
    if not rows:
        return set()
    # No conflict target: a clash on the key or on event_id is a duplicate alike.
    tail = "ON CONFLICT DO NOTHING RETURNING idempotency_key"
    return set(insert_rows(conn, billing_records, tuple(rows[0]), rows, tail))


def _insert_rejections(conn: sa.Connection, rejections: Sequence[Rejection], now: datetime) -> None:
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
    insert_rows(conn, rejected_events, tuple(rows[0]), rows, tail)
