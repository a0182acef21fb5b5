"""Every query billing makes, in one place. The consumer and the CLI call only these.

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

Statements 1-4 cannot fail for a reason that belongs to one message: the decoder and the
pricing limits have already refused anything a column could not hold. A failure here is a
database problem and rolls back the batch; the consumer then retries message by message.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import pg_arrays
from billing.decode import TOP_LEVEL_IDS, UsageRecord, delivery_key
from billing.pricing import CHARGE_QUANTUM, PricingError, compute_charge
from billing.report import Audit, BillingReport, BreakdownRow, UnpricedProduct, UserTotals
from billing.schema import (
    BILLED,
    DEBIT,
    UNPRICED,
    billing_records,
    prices,
    rejected_events,
    wallet_transactions,
    wallets,
)

_ZERO = Decimal(0).quantize(CHARGE_QUANTUM)

# Rows per INSERT statement: keeps every statement under SQLite's bound-parameter limit.
_CHUNK = 500


class Outcome(enum.StrEnum):
    BILLED = "billed"  # new event, priced: recorded, debited
    UNPRICED = "unpriced"  # new event, no price: recorded with charge NULL, not debited
    DUPLICATE = "duplicate"  # key (or event_id) already recorded: nothing changed
    REJECTED = "rejected"  # not JSON / breaks the contract: kept in rejected_events
    RETRY = "retry"  # could not be stored (database problem): redelivered later


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a message came from: enough to find it again in the stream."""

    stream: str
    stream_seq: int
    subject: str
    deliveries: int = 1
    #: When the stream was created (Unix seconds): part of a delivery key, since a stream
    #: deleted and created again under its name starts its sequences anew.
    stream_created: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """A delivery whose payload decoded into a usage record."""

    delivery: Delivery
    record: UsageRecord
    payload: bytes = b""

    @property
    def key(self) -> str:
        """The de-duplication key: the record's, or its delivery's when it has none."""
        if self.record.keyed_by_delivery:
            d = self.delivery
            return delivery_key(d.stream, d.stream_created, d.stream_seq)
        return self.record.key


@dataclass(frozen=True, slots=True)
class Rejection:
    """A delivery that cannot be billed, with the one-line reason."""

    delivery: Delivery
    payload: bytes
    reason: str
    event_id: str | None = None


Item = Usage | Rejection


def utcnow() -> datetime:
    """Now as a naive UTC datetime, the form every time column here holds."""
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"billing supports SQLite and PostgreSQL, not {name}")


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _CHUNK):
        yield rows[start : start + _CHUNK]


# -- the batch ----------------------------------------------------------------------------


async def apply_batch(
    conn: AsyncConnection, items: Sequence[Item], *, now: datetime | None = None
) -> list[Outcome]:
    """Apply ``items`` in the caller's transaction; return one outcome per item, in order.

    The caller commits, and acknowledges the messages only after the commit.
    """
    now = _naive_utc(now) if now else utcnow()
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
                "event_time": _naive_utc(record.timestamp),
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
    await _update_wallets(conn, deltas, now)
    await _insert_debits(conn, debits)

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
    for start in range(0, len(ids), _CHUNK):
        result = await conn.execute(
            sa.select(prices.c.product_id, prices.c.unit_type, prices.c.unit_price).where(
                prices.c.product_id.in_(ids[start : start + _CHUNK])
            )
        )
        for product_id, unit_type, unit_price in result:
            found[(product_id, unit_type)] = unit_price
    return found


async def _insert_records(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the rows that are new; return their keys. One statement per batch: the
    parameter list goes through SQLAlchemy's "insertmanyvalues", which packs it into
    multi-row ``VALUES`` pages from one cached compiled statement (building a statement
    with the rows inlined would compile it anew for every batch: most of the time once)."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        columns = tuple(rows[0])
        # No conflict target: a clash on the key or on event_id is a duplicate alike.
        tail = "ON CONFLICT DO NOTHING RETURNING idempotency_key"
        statement_pg = pg_arrays.insert_statement(billing_records, columns, tail)
        result = await conn.execute(statement_pg, pg_arrays.parameters(rows, columns))
        return set(result.scalars())
    statement = (
        _insert(conn, billing_records)
        # No conflict target: a clash on the key or on event_id is a duplicate alike.
        .on_conflict_do_nothing()
        .returning(billing_records.c.idempotency_key)
    )
    result = await conn.execute(statement, list(rows))
    return set(result.scalars())


async def _update_wallets(conn: AsyncConnection, deltas: dict[str, Decimal], now: datetime) -> None:
    if not deltas:
        return
    statement = _insert(conn, wallets)
    statement = statement.on_conflict_do_update(
        index_elements=[wallets.c.user_id],
        set_={
            "balance": wallets.c.balance + statement.excluded.balance,
            "updated_at": statement.excluded.updated_at,
        },
    )
    rows = [
        {"user_id": user, "balance": deltas[user], "updated_at": now} for user in sorted(deltas)
    ]
    if conn.dialect.name == "postgresql":
        columns = ("user_id", "balance", "updated_at")
        tail = (
            "ON CONFLICT (user_id) DO UPDATE SET balance = wallets.balance + excluded.balance,"
            " updated_at = excluded.updated_at"
        )
        await conn.execute(
            pg_arrays.insert_statement(wallets, columns, tail), pg_arrays.parameters(rows, columns)
        )
        return
    await conn.execute(statement, rows)


async def _insert_debits(conn: AsyncConnection, debits: Sequence[dict[str, Any]]) -> None:
    if not debits:
        return
    if conn.dialect.name == "postgresql":
        columns = ("user_id", "event_id", "kind", "amount", "created_at")
        await conn.execute(
            pg_arrays.insert_statement(wallet_transactions, columns),
            pg_arrays.parameters(debits, columns),
        )
        return
    for chunk in _chunks(debits):
        await conn.execute(wallet_transactions.insert(), list(chunk))


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
    e = rejected_events
    keys = [e.c.stream, e.c.stream_seq, e.c.payload_sha256]
    await conn.execute(_insert(conn, e).on_conflict_do_nothing(index_elements=keys), rows)


# -- prices -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    product_id: str
    unit_type: str
    unit_price: Decimal
    updated_at: datetime


async def set_price(
    conn: AsyncConnection,
    product_id: str,
    unit_type: str,
    unit_price: Decimal,
    *,
    now: datetime | None = None,
) -> None:
    """Insert or replace the price of ``(product_id, unit_type)``.

    A new price applies to events recorded from now on; events already billed keep the
    price they were billed at (``billing_records.unit_price``).
    """
    statement = _insert(conn, prices).values(
        product_id=product_id,
        unit_type=unit_type,
        unit_price=unit_price,
        updated_at=_naive_utc(now) if now else utcnow(),
    )
    statement = statement.on_conflict_do_update(
        index_elements=[prices.c.product_id, prices.c.unit_type],
        set_={
            "unit_price": statement.excluded.unit_price,
            "updated_at": statement.excluded.updated_at,
        },
    )
    await conn.execute(statement)


async def list_prices(conn: AsyncConnection) -> list[Price]:
    result = await conn.execute(
        sa.select(
            prices.c.product_id, prices.c.unit_type, prices.c.unit_price, prices.c.updated_at
        ).order_by(prices.c.product_id, prices.c.unit_type)
    )
    return [Price(*row) for row in result]


async def reprice_unpriced(
    conn: AsyncConnection, *, limit: int = 10_000, now: datetime | None = None
) -> int:
    """Bill up to ``limit`` unpriced records whose product now has a price; return how many.

    Each becomes ``billed`` with the current price, gets its debit, and moves its wallet,
    exactly as if it had been priced on arrival. Run it in a transaction of its own.
    """
    now = _naive_utc(now) if now else utcnow()
    result = await conn.execute(
        sa.select(
            billing_records.c.id,
            billing_records.c.event_id,
            billing_records.c.user_id,
            billing_records.c.usage_amount,
            prices.c.unit_price,
        )
        .join(
            prices,
            sa.and_(
                prices.c.product_id == billing_records.c.product_id,
                prices.c.unit_type == billing_records.c.unit_type,
            ),
        )
        .where(billing_records.c.state == UNPRICED)
        .order_by(billing_records.c.id)
        .limit(limit)
    )
    deltas: dict[str, Decimal] = {}
    debits: list[dict[str, Any]] = []
    for record_id, event_id, user_id, usage_amount, unit_price in result.all():
        try:
            charge = compute_charge(usage_amount, unit_price)
        except PricingError:
            continue  # stays unpriced and visible; the price is the thing to fix
        updated = await conn.execute(
            billing_records.update()
            .where(billing_records.c.id == record_id, billing_records.c.state == UNPRICED)
            .values(state=BILLED, unit_price=unit_price, charge=charge)
        )
        if updated.rowcount != 1:
            continue  # another process repriced it meanwhile
        deltas[user_id] = deltas.get(user_id, Decimal(0)) - charge
        debits.append(
            {
                "user_id": user_id,
                "event_id": event_id,
                "kind": DEBIT,
                "amount": -charge,
                "created_at": now,
            }
        )
    await _update_wallets(conn, deltas, now)
    await _insert_debits(conn, debits)
    return len(debits)


# -- reading ------------------------------------------------------------------------------


async def report(conn: AsyncConnection) -> BillingReport:
    """Per-user counts, charges and balances, and the totals (all exact)."""
    r = billing_records
    per_user = await conn.execute(
        sa.select(
            r.c.user_id,
            sa.func.count().filter(r.c.state == BILLED),
            sa.func.count().filter(r.c.state == UNPRICED),
            sa.func.sum(r.c.charge),
        ).group_by(r.c.user_id)
    )
    counts = {user: (billed, unpriced, charged) for user, billed, unpriced, charged in per_user}
    balances = dict((await conn.execute(sa.select(wallets.c.user_id, wallets.c.balance))).all())
    users = []
    for user in sorted(set(counts) | set(balances)):
        billed, unpriced, charged = counts.get(user, (0, 0, None))
        users.append(
            UserTotals(
                user_id=user,
                billed_events=int(billed),
                unpriced_events=int(unpriced),
                charged=charged if charged is not None else _ZERO,
                balance=balances.get(user, _ZERO),
            )
        )
    rejected = await conn.scalar(sa.select(sa.func.count()).select_from(rejected_events))
    unpriced_products = await conn.execute(
        sa.select(r.c.product_id, r.c.unit_type, sa.func.count())
        .where(r.c.state == UNPRICED)
        .group_by(r.c.product_id, r.c.unit_type)
        .order_by(r.c.product_id, r.c.unit_type)
    )
    return BillingReport(
        users=tuple(users),
        billed_events=sum(u.billed_events for u in users),
        unpriced_events=sum(u.unpriced_events for u in users),
        rejected_events=int(rejected or 0),
        total_charged=sum((u.charged for u in users), _ZERO),
        total_balance=sum((u.balance for u in users), _ZERO),
        unpriced_products=tuple(UnpricedProduct(p, u, int(n)) for p, u, n in unpriced_products),
    )


async def breakdown(
    conn: AsyncConnection,
    by: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[BreakdownRow]:
    """Events, usage (in each unit type's own unit) and charges per user, product or day
    (of the usage's time), per unit type; ``since`` inclusive, ``until`` exclusive."""
    r = billing_records
    group: sa.ColumnElement[Any]
    if by == "user":
        group = r.c.user_id
    elif by == "product":
        group = r.c.product_id
    elif by == "day":
        group = sa.func.date(r.c.event_time)
    else:
        raise ValueError(f"cannot group by {by!r}")
    query = sa.select(
        group,
        r.c.unit_type,
        sa.func.count().filter(r.c.state == BILLED),
        sa.func.count().filter(r.c.state == UNPRICED),
        sa.func.sum(r.c.usage_amount),
        sa.func.sum(r.c.charge),
    ).group_by(group, r.c.unit_type)
    if since is not None:
        query = query.where(r.c.event_time >= _naive_utc(since))
    if until is not None:
        query = query.where(r.c.event_time < _naive_utc(until))
    rows = [
        BreakdownRow(
            group=str(key),
            unit_type=unit_type,
            billed_events=int(billed),
            unpriced_events=int(unpriced),
            usage=usage if usage is not None else Decimal(0),
            charged=charged if charged is not None else _ZERO,
        )
        for key, unit_type, billed, unpriced, usage, charged in await conn.execute(query)
    ]
    return sorted(rows, key=lambda row: (row.group, row.unit_type))


async def audit(conn: AsyncConnection) -> Audit:
    """Check the ledger's invariants; see :class:`billing.report.Audit`."""
    r, t, w = billing_records, wallet_transactions, wallets
    problems: list[str] = []
    bad_records = (
        await conn.execute(
            sa.select(r.c.event_id, r.c.state, sa.func.count(t.c.id))
            .select_from(r.outerjoin(t, t.c.event_id == r.c.event_id))
            .group_by(r.c.event_id, r.c.state, r.c.charge)
            .having(
                sa.or_(
                    sa.and_(
                        r.c.state == BILLED,
                        sa.or_(
                            sa.func.count(t.c.id) != 1,
                            sa.func.sum(t.c.amount) != -r.c.charge,
                        ),
                    ),
                    sa.and_(r.c.state == UNPRICED, sa.func.count(t.c.id) != 0),
                )
            )
            .limit(20)
        )
    ).all()
    problems.extend(
        f"record {event_id} ({state}) has {n} transaction(s) or a wrong amount"
        for event_id, state, n in bad_records
    )
    orphans = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(t.outerjoin(r, r.c.event_id == t.c.event_id))
        .where(r.c.id.is_(None))
    )
    if orphans:
        problems.append(f"{orphans} transaction(s) without a billing record")
    sums = dict(
        (
            await conn.execute(
                sa.select(t.c.user_id, sa.func.sum(t.c.amount)).group_by(t.c.user_id)
            )
        ).all()
    )
    balances = dict((await conn.execute(sa.select(w.c.user_id, w.c.balance))).all())
    for user in sorted(set(sums) | set(balances)):
        expected = sums.get(user) or Decimal(0)
        if user not in balances:
            problems.append(f"user {user} has transactions but no wallet")
        elif balances[user] != expected:
            problems.append(
                f"wallet {user}: balance {balances[user]:f} != sum of transactions {expected:f}"
            )
    return Audit(
        records=int(await conn.scalar(sa.select(sa.func.count()).select_from(r)) or 0),
        transactions=int(await conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0),
        wallets=len(balances),
        problems=tuple(problems),
    )


async def event_states(conn: AsyncConnection) -> dict[str, str]:
    """``event_id -> state`` for every recorded event (for the demo's exactly-once check)."""
    result = await conn.execute(sa.select(billing_records.c.event_id, billing_records.c.state))
    return dict(result.all())


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    id: int
    stream: str
    stream_seq: int
    subject: str
    payload: bytes
    reason: str
    event_id: str | None
    deliveries: int
    received_at: datetime


async def rejected(conn: AsyncConnection, *, limit: int = 100) -> list[RejectedEvent]:
    """The most recent rejected deliveries, newest first."""
    e = rejected_events
    result = await conn.execute(
        sa.select(
            e.c.id,
            e.c.stream,
            e.c.stream_seq,
            e.c.subject,
            e.c.payload,
            e.c.reason,
            e.c.event_id,
            e.c.deliveries,
            e.c.received_at,
        )
        .order_by(e.c.id.desc())
        .limit(limit)
    )
    return [RejectedEvent(*row) for row in result]
