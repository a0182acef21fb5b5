"""SQLite WAL checkpoints from a connection of their own, off the commit path (billing).

SQLite's default checkpoints from the connection that commits, once the WAL passes 1,000
pages: that commit then copies the WAL into the database file and fsyncs it, with the
write lock still held. Measured in ``bench.billing`` at a steady 1,000 events/s on a shared
machine, those commits stalled the consumer for up to ~200 ms every few seconds: stored ->
billed p99 181-316 ms with them, 35 ms without (p50 8-26 ms either way).

So billing writes with ``PRAGMA wal_autocheckpoint = 0`` and :class:`WalCheckpointer`
runs a ``PASSIVE`` checkpoint every ``every`` seconds from a connection of its own in a
worker thread: a passive checkpoint never blocks a writer, and the fsync happens off the
loop. (The shipper, which writes without pause while it drains, checkpoints between its
own writes instead: :mod:`outbox.transactions` says why.)

Nothing is at risk if it falls behind or fails: the WAL is the durable copy until it is
checkpointed; it only grows. A failed checkpoint is logged (``wal_checkpoint_failed``)
and tried again; the owner checkpoints once more when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Final

logger = logging.getLogger("outbox.checkpoints")

EVERY: Final = 1.0


def checkpoint(path: str, busy_timeout_ms: int = 5_000) -> tuple[int, int, int]:
    """One ``PASSIVE`` checkpoint of the database at ``path``: (busy, WAL frames, frames
    checkpointed), as SQLite reports them."""
    connection = sqlite3.connect(path, timeout=busy_timeout_ms / 1000)
    try:
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        connection.close()


class WalCheckpointer:
    """Checkpoints ``path`` every ``every`` seconds until stopped."""

    def __init__(self, path: str, every: float = EVERY, *, name: str = "wal-checkpointer") -> None:
        self.path = path
        self.every = every
        self.name = name
        self.checkpoints = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Stop the loop, then checkpoint once more (the WAL's tail goes home at close)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.once()

    async def run(self) -> None:
        """Checkpoint every ``every`` seconds, for ever (a task to cancel)."""
        while True:
            await asyncio.sleep(self.every)
            await self.once()

    async def once(self) -> None:
        try:
            await asyncio.to_thread(checkpoint, self.path)
            self.checkpoints += 1
        except (sqlite3.Error, OSError) as exc:
            logger.warning(
                "WAL checkpoint of %s failed (%r); retrying, the WAL grows meanwhile",
                self.path,
                exc,
                extra={"action": "wal_checkpoint_failed"},
            )
