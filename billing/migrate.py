"""Run billing's alembic migrations from code (``usage-billing run``/``migrate``, tests).

The scripts ship inside the package (``billing/migrations``), so an installed consumer can
bring a fresh database to the current schema without a source checkout. The history is
billing's own (version table ``billing_alembic_version``, branch label ``billing``),
independent of the outbox's, so both can share one database or live apart.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import migrate as outbox_migrate
from outbox.migrate import migration_lock

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    return outbox_migrate.alembic_config(connection, directory=MIGRATIONS_DIR)


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` (in its transaction; the caller commits).

    On SQLite engines from :mod:`billing.engines` the transaction begins with ``BEGIN
    IMMEDIATE``, so consumers starting together migrate one at a time; on PostgreSQL the
    history's ``env.py`` takes a transaction-scoped advisory lock, as the outbox's does
    (:func:`outbox.alembic_env.run_env`), on the command line too.
    """
    command.upgrade(alembic_config(connection), revision)


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade through an async engine, in one transaction."""
    # One alembic run at a time per process: its proxies are module-level (see outbox.migrate).
    async with migration_lock(), engine.begin() as conn:
        await conn.run_sync(upgrade, revision)
