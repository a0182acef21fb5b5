"""The outbox's own part of a drain, alone: read the rows and delete them, no publishing.

Raw ``sqlite3`` on a file filled through the real write API, the shipper's sizes (reads of
``batch`` rows in id order, deletes of :data:`shipper.pipeline.SETTLE_CHUNK` rows, one
``BEGIN IMMEDIATE`` transaction each) and the shipper's pragmas (WAL, synchronous NORMAL,
secure_delete FAST).
With the fast-ingest ceiling (publishing alone, no database) it bounds what one process
can drain: the two run in one interpreter, so their costs per row add up (less what
SQLite and the socket do with the interpreter lock released).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from bench.ceilings import Rate
from bench.workload import fill_outbox
from outbox.sqlite import SECURE_DELETE
from shipper.pipeline import SETTLE_CHUNK

_READ = (
    "SELECT id, event_id, subject, headers, payload, created_at, attempts FROM usage_outbox "
    "WHERE id > ? ORDER BY id LIMIT ?"
)


async def bench_outbox_floor(directory: Path, events: int, batch: int) -> Rate:
    path = directory / "outbox-floor.db"
    await fill_outbox(path, events)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA secure_delete = {SECURE_DELETE}")
        start, after, done = time.perf_counter(), 0, 0
        while rows := conn.execute(_READ, (after, batch)).fetchall():
            after, done = rows[-1][0], done + len(rows)
            for first in range(0, len(rows), SETTLE_CHUNK):
                ids = [row[0] for row in rows[first : first + SETTLE_CHUNK]]
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    f"DELETE FROM usage_outbox WHERE id IN ({', '.join('?' * len(ids))})", ids
                )
                conn.execute("COMMIT")
        seconds = time.perf_counter() - start
    path.unlink()
    return Rate(done, seconds, lost=events - done)
