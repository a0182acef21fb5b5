"""Database probes for ``/readyz`` and the metrics' counts: a reader engine that never
takes SQLite's write lock, and a trivial query with a deadline."""

from __future__ import annotations

import asyncio
from typing import Final
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.sqlite import configure_sqlite, is_sqlite, sqlite_file

#: A probe that takes longer than this counts as down.
PROBE_TIMEOUT: Final = 1.0


def reader_engine(engine: AsyncEngine) -> AsyncEngine:
    """An engine for probes and counts that never takes SQLite's write lock.

    The outbox and billing engines begin every transaction with ``BEGIN IMMEDIATE``; a
    count run through them would hold the write lock for its whole scan and stall the
    services writing events. In WAL mode a deferred read blocks no writer, so SQLite
    files get a separate engine with plain ``BEGIN``. Other databases (and in-memory
    SQLite, which a second engine would not see) use ``engine`` itself.
    """
    url = engine.url
    if not is_sqlite(url) or make_url(url).database in (None, "", ":memory:"):
        return engine
    path = sqlite_file(url)
    if path is not None:
        # mode=rw: a probe never creates the file (a missing outbox must stay missing,
        # for the shipper to say so, instead of becoming an empty one).
        url = make_url(f"sqlite+aiosqlite:///file:{quote(path)}?mode=rw&uri=true")
    reader = create_async_engine(url, pool_size=1, max_overflow=0)
    configure_sqlite(reader.sync_engine, begin_immediate=False)
    return reader


async def database_problem(engine: AsyncEngine) -> str | None:
    """Why the database does not answer a trivial query in time, or None."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
    except (SQLAlchemyError, TimeoutError, OSError) as exc:
        return f"database did not answer ({type(exc).__name__})"
    return None
