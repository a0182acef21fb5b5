"""The ledger writes that both billing an event and repricing one make: the wallet
deltas (one upsert per user, in user order) and the debits.

Both go to the driver through :func:`billing.batch_insert.insert_rows`. ``insert_for``
gives the dialect's SQLAlchemy ``INSERT`` with ``ON CONFLICT`` support, for the
one-row statements elsewhere (setting a price).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.batch_insert import insert_rows
from billing.schema import wallet_transactions, wallets


def insert_for(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"billing supports SQLite and PostgreSQL, not {name}")


def update_wallets(conn: sa.Connection, deltas: dict[str, Decimal], now: datetime) -> None:
    """Add each user's delta to their wallet (created at 0 when new), in user order: two
    PostgreSQL transactions then lock the wallets they share in the same order."""
    rows = [
        {"user_id": user, "balance": deltas[user], "updated_at": now} for user in sorted(deltas)
    ]
    tail = (
        "ON CONFLICT (user_id) DO UPDATE SET balance = wallets.balance + excluded.balance,"
        " updated_at = excluded.updated_at"
    )
    insert_rows(conn, wallets, ("user_id", "balance", "updated_at"), rows, tail)


def insert_debits(conn: sa.Connection, debits: Sequence[dict[str, Any]]) -> None:
    columns = ("user_id", "event_id", "kind", "amount", "created_at")
    insert_rows(conn, wallet_transactions, columns, debits)
