"""When the shipper's database thread checkpoints the WAL (outbox.transactions)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox import transactions
from outbox.sqlite import create_outbox_engine, sqlite_url
from outbox.transactions import WAL_FRAMES_LIMIT, Transactions, _Checkpoints


def test_checkpoints_wait_for_the_interval_then_run_after_every_write_while_the_wal_is_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(transactions.time, "monotonic", lambda: now[0])
    checkpoints = _Checkpoints(0.25)
    assert not checkpoints.due()  # the interval has not passed yet
    now[0] += 0.3
    assert checkpoints.due()
    checkpoints.done(WAL_FRAMES_LIMIT + 1)  # the WAL did not start over: catch up
    assert checkpoints.due() and checkpoints.due()
    checkpoints.done(10)  # started over: back to the interval
    assert not checkpoints.due()
    now[0] += 0.3
    assert checkpoints.due()
    checkpoints.done(None)  # a failed checkpoint: wait for the interval again
    assert not checkpoints.due()


async def test_a_write_returns_before_its_checkpoint_and_even_while_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint after a write is a job of its own on the db thread: the caller gets
    # its result first. A write that ends while the store closes (no new jobs taken) still
    # returns what it committed, checkpointing in line instead.
    engine = create_outbox_engine(sqlite_url(tmp_path / "outbox.db"))
    db = Transactions(engine, checkpoint_interval=0.0)  # a checkpoint after every write
    await db.write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (v INTEGER)"))
    real = transactions._checkpoint
    checkpoint_may_finish = threading.Event()

    def checkpoint(write_engine: sa.Engine) -> int | None:
        checkpoint_may_finish.wait(5)
        return real(write_engine)

    await db.read(lambda conn: None)  # queued behind the first write's checkpoint
    monkeypatch.setattr(transactions, "_checkpoint", checkpoint)

    def insert(conn: sa.Connection, value: int) -> int:
        conn.exec_driver_sql(f"INSERT INTO t VALUES ({value})")
        return value

    # Returns while its checkpoint is still held back (it would wait 5 s for it in line).
    assert await asyncio.wait_for(db.write(insert, 1), 2) == 1
    checkpoint_may_finish.set()

    release = threading.Event()

    def slow_insert(conn: sa.Connection) -> int:
        release.wait(5)
        return insert(conn, 2)

    pending = asyncio.ensure_future(db.write(slow_insert))
    closing = asyncio.ensure_future(db.close())
    await asyncio.sleep(0)  # close() has begun: no checkpoint is queued after it
    release.set()
    assert await asyncio.wait_for(pending, 5) == 2
    await asyncio.wait_for(closing, 5)
    await engine.dispose()
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as conn:
        assert conn.execute("SELECT v FROM t ORDER BY v").fetchall() == [(1,), (2,)]
