"""Engines for the billing database: SQLite by default, PostgreSQL by URL.

SQLite gets the outbox's settings (:mod:`outbox.sqlite`): WAL, ``busy_timeout`` and
``BEGIN IMMEDIATE``, so the consumer, ``usage-billing report`` and ``prices set`` can use
the file at the same time and every conflict is a short, bounded wait. ``BEGIN IMMEDIATE``
also serialises writers, which the per-batch transaction relies on. On PostgreSQL the
wallet update is a single atomic ``INSERT ... ON CONFLICT DO UPDATE``. A new SQLite file
is created with owner-only permissions (0600, and so its ``-wal`` and ``-shm``), as the
outbox's is.

One setting differs from the outbox's: ``synchronous=FULL``. The consumer acks JetStream
once a batch has committed, and the server then forgets the events; with the outbox's
``NORMAL`` a power cut (not a process crash) can undo the last commits of a WAL file, so
events acked as billed would be neither billed nor redelivered. ``FULL`` syncs the WAL at
every commit, one per batch: measured with ``bench.billing`` on the 2-core box, within the
noise of ``NORMAL`` (0.71-0.73x the ceiling against 0.63-0.66x, fsync ~0.1 ms there).
An outbox may keep ``NORMAL``: what a power cut undoes there is undone together with the
caller's own data, and a re-sent row is de-duplicated.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.sqlite import configure_sqlite, create_private_on_connect, is_sqlite

#: See the module docstring: a committed batch is acked, so its commit must survive a
#: power cut.
BILLING_SYNCHRONOUS = "FULL"

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///billing.db"

# Async drivers and the sync driver alembic's command line uses for the same database.
_SYNC_DRIVERS = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}


def sync_url(url: str | sa.URL) -> sa.URL:
    """The same database through a synchronous driver (for alembic's command line)."""
    parsed = make_url(url)
    return parsed.set(drivername=_SYNC_DRIVERS.get(parsed.drivername, parsed.drivername))


def async_url(url: str | sa.URL) -> sa.URL:
    """The same database through an async driver (``sqlite`` becomes aiosqlite)."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_billing_engine(
    url: str | sa.URL, *, checkpoint_on_commit: bool = True, **engine_kwargs: Any
) -> AsyncEngine:
    """An async engine; on SQLite with WAL, busy_timeout and BEGIN IMMEDIATE.

    ``checkpoint_on_commit=False`` (SQLite): commits never checkpoint the WAL; the caller
    must (the consumer runs :class:`outbox.checkpoints.WalCheckpointer`).
    """
    engine = create_async_engine(async_url(url), **engine_kwargs)
    if is_sqlite(engine.url):
        create_private_on_connect(engine.sync_engine)
        configure_sqlite(engine.sync_engine, synchronous=BILLING_SYNCHRONOUS)
        if not checkpoint_on_commit:
            _no_checkpoint_on_commit(engine.sync_engine)
    return engine


def _no_checkpoint_on_commit(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA wal_autocheckpoint = 0")
        finally:
            cursor.close()


def create_billing_sync_engine(
    url: str | sa.URL, *, checkpoint_on_commit: bool = True, **engine_kwargs: Any
) -> sa.Engine:
    """A synchronous engine, set up as :func:`create_billing_engine`'s."""
    engine = sa.create_engine(sync_url(url), **engine_kwargs)
    if is_sqlite(engine.url):
        create_private_on_connect(engine)
        configure_sqlite(engine, synchronous=BILLING_SYNCHRONOUS)
        if not checkpoint_on_commit:
            _no_checkpoint_on_commit(engine)
    return engine
