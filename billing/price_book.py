"""Prices: set and list them, and bill the events recorded before their price existed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.items import naive_utc, utcnow
from billing.ledger import Charge, insert_for, post_charges
from billing.pricing import PricingError, compute_charge
from billing.schema import BILLED, UNPRICED, billing_records, prices


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
    statement = insert_for(conn, prices).values(
        product_id=product_id,
        unit_type=unit_type,
        unit_price=unit_price,
        updated_at=naive_utc(now) if now else utcnow(),
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
    now = naive_utc(now) if now else utcnow()
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
    charges: list[Charge] = []
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
        charges.append((user_id, event_id, charge))
    await conn.run_sync(post_charges, charges, now)
    return len(charges)
