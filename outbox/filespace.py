"""File space and the WAL of an SQLite outbox: free pages, incremental vacuum,
checkpoints (no-ops, or -1/None answers, on other databases). The shipper's tidier
(``shipper.tidy``) is their one user."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


def freelist_pages(conn: sa.Connection) -> int:
    """Free pages in an SQLite file (space a vacuum could give back); 0 elsewhere."""
    if conn.dialect.name != "sqlite":
        return 0
    return int((conn.exec_driver_sql("PRAGMA freelist_count")).scalar() or 0)


def incremental_vacuum(conn: sa.Connection, pages: int) -> None:
    """Give back up to ``pages`` free pages to the file system (SQLite with
    ``auto_vacuum=INCREMENTAL``; a no-op otherwise). Run inside a short write transaction."""
    if conn.dialect.name == "sqlite":
        # SQLite frees one page per step of incremental_vacuum(N), and Python's sqlite3
        # steps a statement that returns no columns only once: N=256 would free one page.
        # One page per execution, run ``pages`` times in one executemany, frees them all.
        cursor = conn.connection.cursor()
        try:
            cursor.executemany("PRAGMA incremental_vacuum(1)", [()] * int(pages))
        finally:
            cursor.close()


async def checkpoint(conn: AsyncConnection, mode: str = "PASSIVE") -> tuple[int, int, int] | None:
    """A WAL checkpoint outside any transaction; returns (busy, wal frames, checkpointed).

    PASSIVE never waits for anyone. TRUNCATE also empties the -wal file, but waits for
    readers and holds off writers meanwhile: call it only right after a PASSIVE one has
    copied every frame, when it has nothing left to copy and finishes at once."""
    if conn.dialect.name != "sqlite":
        return None
    if mode not in ("PASSIVE", "TRUNCATE"):
        raise ValueError(f"checkpoint mode {mode!r}")
    # On the driver connection: a checkpoint inside a transaction (the engine's BEGIN
    # IMMEDIATE) could not run. ``conn`` must not have begun one.
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    cursor = await driver.execute(f"PRAGMA wal_checkpoint({mode})")
    try:
        row = await cursor.fetchone()
    finally:
        await cursor.close()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def auto_vacuum_mode(conn: sa.Connection) -> int:
    """SQLite's ``auto_vacuum``: 0 none, 1 full, 2 incremental; -1 for other databases."""
    if conn.dialect.name != "sqlite":
        return -1
    return int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() or 0)
