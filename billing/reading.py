"""Reading the billing tables: the report, the breakdowns, the rejected deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.items import naive_utc
from billing.pricing import CHARGE_QUANTUM
from billing.report import BillingReport, BreakdownRow, UnpricedProduct, UserTotals
from billing.schema import BILLED, UNPRICED, billing_records, rejected_events, wallets

_ZERO = Decimal(0).quantize(CHARGE_QUANTUM)


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
        query = query.where(r.c.event_time >= naive_utc(since))
    if until is not None:
        query = query.where(r.c.event_time < naive_utc(until))
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
