"""The ledger writes that both billing an event and repricing one make: the wallet
deltas (one upsert per user, in user order) and the debits.

``insert_for`` gives the dialect's ``INSERT`` with ``ON CONFLICT`` support; ``chunks``
keeps each statement under SQLite's bound-parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import pg_arrays
from billing.schema import wallet_transactions, wallets

# Rows per INSERT statement: keeps every statement under SQLite's bound-parameter limit.
CHUNK = 500


def insert_for(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"billing supports SQLite and PostgreSQL, not {name}")


def chunks(rows: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


async def update_wallets(conn: AsyncConnection, deltas: dict[str, Decimal], now: datetime) -> None:
    if not deltas:
        return
    statement = insert_for(conn, wallets)
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


async def insert_debits(conn: AsyncConnection, debits: Sequence[dict[str, Any]]) -> None:
    if not debits:
        return
    if conn.dialect.name == "postgresql":
        columns = ("user_id", "event_id", "kind", "amount", "created_at")
        await conn.execute(
            pg_arrays.insert_statement(wallet_transactions, columns),
            pg_arrays.parameters(debits, columns),
        )
        return
    for chunk in chunks(debits):
        await conn.execute(wallet_transactions.insert(), list(chunk))
