"""Every connection to an outbox file deletes with ``secure_delete=FAST``: Debian builds
SQLite with secure delete on, which writes each page a delete frees to the WAL again and
made the shipper's settle a third slower (outbox/sqlite.py)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from outbox.sqlite import create_outbox_engine, create_outbox_sync_engine, sqlite_url
from outbox.transactions import Transactions

FAST = 2  # PRAGMA secure_delete: 0 OFF, 1 ON, 2 FAST


def _secure_delete(conn: sa.Connection) -> object:
    return conn.exec_driver_sql("PRAGMA secure_delete").scalar()


async def test_outbox_engines_delete_with_secure_delete_fast(tmp_path: Path) -> None:
    engine = create_outbox_engine(sqlite_url(tmp_path / "async.db"))
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_secure_delete) == FAST
    finally:
        await engine.dispose()
    sync_engine = create_outbox_sync_engine(sqlite_url(tmp_path / "sync.db", asynchronous=False))
    try:
        with sync_engine.connect() as conn:
            assert _secure_delete(conn) == FAST
    finally:
        sync_engine.dispose()


async def test_the_shippers_write_and_read_connections_delete_with_fast(tmp_path: Path) -> None:
    engine = create_outbox_engine(sqlite_url(tmp_path / "outbox.db"))
    db = Transactions(engine)
    try:
        assert await db.write(_secure_delete) == FAST  # the settle's deletes run here
        assert await db.read_inline(_secure_delete) == FAST
    finally:
        await db.close()
        await engine.dispose()
