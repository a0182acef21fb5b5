"""SQLite settings for an outbox file shared by several writer processes and one shipper.

* ``journal_mode=WAL``: readers (the shipper's claim) never block writers and vice versa.
* ``synchronous=NORMAL``: in WAL mode a commit is not fsynced, only each checkpoint is.
  A power loss (not a process crash) can lose the last commits; the file stays
  consistent. It is the usual trade-off for an outbox beside a service: ~34k commits/s
  instead of ~6k. Pass ``synchronous="FULL"`` where a power cut must not lose a row.
* ``busy_timeout``: a writer waits for the lock instead of failing with
  ``database is locked``; every transaction here is short, so the wait is too.
* ``BEGIN IMMEDIATE`` on engines this package owns: the write lock is taken at the start
  of the transaction. A deferred transaction that reads and then writes can fail at once
  with ``SQLITE_BUSY`` (the busy handler is not called for a lock upgrade on a stale
  snapshot); taking the lock up front makes every conflict a plain, bounded wait.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str | sa.URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_url(path: str | Path, *, asynchronous: bool = True) -> str:
    """URL of an SQLite file for SQLAlchemy (aiosqlite when ``asynchronous``)."""
    driver = "sqlite+aiosqlite" if asynchronous else "sqlite"
    return f"{driver}:///{Path(path)}"


def configure_sqlite(
    engine: sa.Engine,
    *,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    begin_immediate: bool = True,
) -> None:
    """Install the pragmas (and optionally ``BEGIN IMMEDIATE``) on a sync engine.

    For an :class:`AsyncEngine` pass ``engine.sync_engine``. A service that keeps the
    outbox in its own SQLite database should call this on its engine, with
    ``begin_immediate=False`` if it wants its read-only transactions to stay deferred.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if begin_immediate:
            # Take transaction control from the sqlite3 module so "begin" below decides.
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    if begin_immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_outbox_engine(url: str, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine for an outbox database, with the SQLite settings above applied."""
    engine = create_async_engine(url, **engine_kwargs)
    if is_sqlite(url):
        configure_sqlite(engine.sync_engine)
    return engine


def create_outbox_sync_engine(url: str, **engine_kwargs: Any) -> sa.Engine:
    engine = sa.create_engine(url, **engine_kwargs)
    if is_sqlite(url):
        configure_sqlite(engine)
    return engine
