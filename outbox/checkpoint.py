"""WAL checkpoints off the commit path, for the Outbox's writers and the shipper."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from outbox.sqlite import DEFAULT_BUSY_TIMEOUT_MS

logger = logging.getLogger("outbox.checkpoint")


class Checkpointer:
    """WAL checkpoints off the commit path.

    SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1,000
    pages, on the committing connection: every few thousand events one group commit paid
    for copying and fsyncing the WAL, and every caller waiting on that group (and the next)
    saw it. The ``Outbox`` engine turns the automatic checkpoint off and asks for a
    ``PASSIVE`` checkpoint here, in a worker thread on a connection of its own, every
    ``every_rows`` rows. A passive checkpoint never blocks writers or readers; what it
    cannot copy yet (a reader still needs it) the next one does.
    """

    def __init__(self, path: str, every_rows: int) -> None:
        self.path = path
        self.every_rows = every_rows
        self.checkpoints = 0
        self._rows = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._tail_due = False

    def wrote(self, rows: int) -> None:
        self._rows += rows
        if self._rows >= self.every_rows and self._task is None and not self._tail_due:
            self._rows = 0
            self._task = asyncio.create_task(asyncio.to_thread(self._checkpoint))

    @property
    def tail_due(self) -> bool:
        """The background checkpoint is done: time for the writer to finish the job."""
        if self._task is not None and self._task.done():
            self._task = None
            self._tail_due = True
        return self._tail_due

    async def tail(self) -> None:
        """Checkpoint what was committed while the background pass ran, with the writer
        paused (the caller is the writer). Little is left to copy, and with the WAL fully
        checkpointed the next commit starts it over from the beginning, so it stays small.
        A checkpoint that runs while commits keep coming never catches up: the WAL would
        only ever grow."""
        self._tail_due = False
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self.path,
                    timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,  # one checkpoint at a time, in any worker thread
                )
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # the next trigger tries again
            logger.warning("outbox WAL checkpoint failed: %s", exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if task is not None and task.get_loop() is loop:
            await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    # Checkpoints run in the background (Checkpointer), never inside a commit.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
    finally:
        cursor.close()
