"""Retention between drains: expired ``sent`` rows, free pages, the WAL.

Each step is one short write transaction, so writers get SQLite's write lock between
steps; the shipper pauses briefly after a step that left work, and looks for work at
most once every ``TIDY_INTERVAL`` while there is none (see docs/retention.md).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import filespace, store
from outbox.transactions import Transactions
from shipper.config import ShipperConfig
from shipper.stats import ShipperStats

logger = logging.getLogger("shipper")

#: Pause between two cleanup or vacuum steps, so writers take the lock in between.
TIDY_PAUSE = 0.02
#: Seconds between two looks for cleanup work while there is none.
TIDY_INTERVAL = 1.0


class Tidier:
    def __init__(
        self,
        config: ShipperConfig,
        engine: AsyncEngine,
        db: Transactions,
        stats: ShipperStats,
    ) -> None:
        self.config = config
        self.engine = engine
        self.db = db
        self.stats = stats
        self._next_look = 0.0  # monotonic time of the next look for cleanup work
        self._auto_vacuum: bool | None = None  # the file can shrink (checked once)
        self._shrinking = False  # a vacuum pass is under way: go on until no page is free

    async def step(self, *, force: bool = False) -> bool:
        """Delete up to ``cleanup_batch`` expired ``sent`` rows, else give back up to
        ``vacuum_step`` free pages. After the file has shrunk, checkpoint the WAL so
        the -wal file shrinks too. Returns True when more work is left (the caller
        pauses for ``TIDY_PAUSE`` and comes back).

        Once a look finds nothing to do, the next waits ``TIDY_INTERVAL`` (unless
        ``force``): under a steady trickle a look after every poll would cost as much as
        the shipping itself."""
        if not force and time.monotonic() < self._next_look:
            return False
        try:
            more = await self._step()
        except SQLAlchemyError as exc:
            logger.warning("outbox cleanup: %s", exc, extra={"action": "cleanup_failed"})
            more = False
        if not more:
            self._next_look = time.monotonic() + TIDY_INTERVAL
        return more

    async def _step(self) -> bool:
        if await self._delete_expired():
            return True
        if self.config.vacuum_step <= 0 or not await self._can_shrink():
            return False
        return await self._vacuum()

    async def _delete_expired(self) -> bool:
        config = self.config
        if config.keep_sent_hours <= 0:
            return False
        before = time.time() - config.keep_sent_hours * 3600.0
        deleted = await self.db.write(
            store.delete_sent_before, before=before, limit=config.cleanup_batch
        )
        self.stats.cleaned += deleted
        return bool(deleted)

    async def _can_shrink(self) -> bool:
        if self._auto_vacuum is None:
            # A read (no write lock: the async engine's transactions BEGIN IMMEDIATE).
            self._auto_vacuum = await self.db.read(filespace.auto_vacuum_mode) == 2
            if not self._auto_vacuum and self.engine.dialect.name == "sqlite":
                logger.info(
                    "the outbox file is not in auto_vacuum=INCREMENTAL mode; it will not "
                    "shrink (see docs/retention.md)",
                    extra={"action": "vacuum_unavailable"},
                )
        return self._auto_vacuum

    async def _vacuum(self) -> bool:
        config = self.config
        # Look first with a read (no write lock), and take the write lock only to give
        # pages back.
        free = await self.db.read(filespace.freelist_pages)
        threshold = config.vacuum_min_free_pages if not self._shrinking else 0
        if free > threshold:
            await self.db.write(filespace.incremental_vacuum, config.vacuum_step)
            self.stats.vacuumed_pages += min(free, config.vacuum_step)
            self._shrinking = True
            return True
        if self._shrinking:
            self._shrinking = False
            await self._checkpoint()
        return False

    async def _checkpoint(self) -> None:
        """PASSIVE (waits for nobody); then, if it copied every frame, TRUNCATE, which has
        nothing left to copy and only resets the -wal file."""
        async with self.engine.connect() as conn:
            passive = await filespace.checkpoint(conn, "PASSIVE")
            if passive is not None and passive[0] == 0 and passive[1] == passive[2]:
                await filespace.checkpoint(conn, "TRUNCATE")
