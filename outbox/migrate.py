"""Run the outbox's alembic migrations from code (the ``Outbox`` object, the shipper, tests).

The scripts ship inside the package (``outbox/migrations``), so an installed shipper can
bring a fresh file to the current schema without a source checkout.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` (in its transaction; caller commits).

    On SQLite engines made by :mod:`outbox.sqlite` the transaction starts with
    ``BEGIN IMMEDIATE``, so writer processes starting together migrate one at a time and
    the later ones find the schema already current.
    """
    command.upgrade(alembic_config(connection), revision)


# alembic's ``op`` and ``context`` are module-level proxies. Two migrations running at once
# in one process (each ``run_sync`` is a greenlet, interleaved at every database await)
# tear each other's proxies down: "'NoneType' object has no attribute 'create_table'".
# Every in-process async migration (outbox, billing) takes this per-loop lock.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def migration_lock() -> asyncio.Lock:
    """The lock serialising alembic runs on the running event loop."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade through an async engine, in one transaction, one migration at a time."""
    async with migration_lock(), engine.begin() as conn:
        await conn.run_sync(upgrade, revision)
