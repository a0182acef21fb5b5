"""The ledger's invariants, checked in the database; see :class:`billing.report.Audit`."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.report import Audit
from billing.schema import BILLED, UNPRICED, billing_records, wallet_transactions, wallets


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
