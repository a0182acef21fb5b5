"""``Outbox``: the write API for a service that has no database of its own.

It owns an engine on an SQLite file (or any SQLAlchemy URL) and makes each call durable
before returning. A commit through SQLAlchemy's async layer costs about 1 ms here, so one
commit per call would cap a service near 1,000 events/s. Instead calls queue their
validated events and one writer task commits whatever has queued up meanwhile in a single
transaction (group commit); each caller still returns only once its own row is committed.
On an SQLite file each group commit runs whole in a worker thread
(:class:`~outbox.transactions.Transactions`), so it holds the file's write lock, which
the shipper needs too, only while its INSERT runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import migrate, store
from outbox.contract import DEFAULT_MAX_PAYLOAD_BYTES, build_usage_event, build_usage_events
from outbox.drivers import async_url
from outbox.errors import OutboxError, OutboxStoreError
from outbox.sqlite import DEFAULT_BUSY_TIMEOUT_MS, create_outbox_engine, is_sqlite, sqlite_url
from outbox.transactions import Transactions
from outbox.write import UsageArgs, _insert_sync

logger = logging.getLogger("outbox.service")

DEFAULT_PATH = "usage-outbox.db"
#: Environment variable naming the outbox for :meth:`Outbox.from_env` (a URL or a path).
URL_ENV = "USAGE_OUTBOX_URL"

_Waiter = tuple[list[store.RowValues], "asyncio.Future[None]"]


def resolve_url(url_or_path: str | Path) -> str:
    """Accept a SQLAlchemy URL (a sync driver's becomes its async one's: ``sqlite:///x``
    works) or a plain file path (taken as an SQLite file)."""
    text = str(url_or_path)
    return async_url(text) if "://" in text else sqlite_url(text)


def _plain_sqlite_file(url: str) -> str | None:
    """The file path behind a plain SQLite file URL (no URI mode, no query), else None."""
    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or parsed.query or database.startswith("file:"):
        return None
    return database


class _Checkpointer:
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
        if task is not None and task.get_loop() is _running_loop():
            await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Outbox:
    """A standalone outbox with group commit. Use ``async with Outbox(path) as outbox``."""

    def __init__(
        self,
        url_or_path: str | Path = DEFAULT_PATH,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_group: int = 1024,
        run_migrations: bool = True,
        checkpoint_every_rows: int = 2000,
    ) -> None:
        self.url = resolve_url(url_or_path)
        self.max_payload_bytes = max_payload_bytes
        self.max_group = max_group
        self.run_migrations = run_migrations
        self.checkpoint_every_rows = checkpoint_every_rows
        self._engine: AsyncEngine | None = None
        self._transactions: Transactions | None = None
        self._checkpointer: _Checkpointer | None = None
        self._queue: asyncio.Queue[_Waiter] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()
        self.commits = 0  # group commits made; events / commits is the mean group size

    @classmethod
    def from_env(cls) -> Outbox:
        return cls(os.environ.get(URL_ENV, DEFAULT_PATH))

    def __repr__(self) -> str:
        return f"<Outbox {self.url} commits={self.commits} queued={self._queue.qsize()}>"

    async def open(self) -> Self:
        async with self._open_lock:
            if self._engine is None:
                engine = create_outbox_engine(self.url)
                # Group commits run whole in a worker thread (see outbox.transactions).
                transactions = Transactions(engine)
                path = _plain_sqlite_file(self.url)
                if path is not None and self.checkpoint_every_rows > 0:
                    self._checkpointer = _Checkpointer(path, self.checkpoint_every_rows)
                    event.listen(engine.sync_engine, "connect", _no_autocheckpoint)
                    if transactions.write_engine is not None:
                        event.listen(transactions.write_engine, "connect", _no_autocheckpoint)
                try:
                    if self.run_migrations:
                        await migrate.prepare_engine(engine)
                except (SQLAlchemyError, OutboxStoreError) as exc:
                    await transactions.close()
                    await engine.dispose()
                    raise OutboxStoreError(f"cannot open outbox {self.url}: {exc}") from exc
                self._engine = engine
                self._transactions = transactions
                self._queue = asyncio.Queue()
                self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued, then stop the writer and release the file."""
        writer = self._writer
        if writer is not None:
            if writer.get_loop() is _running_loop():
                await self._queue.join()
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            elif not writer.get_loop().is_closed():
                raise self._wrong_loop()
            # else: the loop that opened the outbox is closed, and its writer with it;
            # only the engine is left to release, which works from this loop.
            self._writer = None
        if self._checkpointer is not None:
            await self._checkpointer.close()
            self._checkpointer = None
        if self._transactions is not None:
            await self._transactions.close()
            self._transactions = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def record(self, **usage: Unpack[UsageArgs]) -> str:
        """Validate and durably record one event; returns its ``event_id`` once committed."""
        event = build_usage_event(**usage, max_payload_bytes=self.max_payload_bytes)
        await self._commit([store.event_values(event)])
        return event.event_id

    async def record_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate all, then commit all together; nothing is written if one is refused."""
        built = build_usage_events(events, max_payload_bytes=self.max_payload_bytes)
        if built:
            await self._commit(store.batch_values(built))
        return [event[0] for event in built]

    def _wrong_loop(self) -> OutboxError:
        return OutboxError(
            f"{self!r} is open in another event loop that is still running; "
            "use one Outbox per event loop"
        )

    async def _commit(self, rows: list[store.RowValues]) -> None:
        writer = self._writer
        if writer is not None and writer.get_loop() is not _running_loop():
            # The writer task, its queue and the engine's connections belong to the loop
            # that opened the outbox: from another loop a call would wait forever.
            if not writer.get_loop().is_closed():
                raise self._wrong_loop()
            # That loop is gone (asyncio.run per job, a loop per test): start over here.
            await self.close()
            self._open_lock = asyncio.Lock()
        if self._writer is None:
            await self.open()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, done))
        await done

    async def _write_loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            if self._checkpointer is not None and self._checkpointer.tail_due:
                await self._checkpointer.tail()
            while len(group) < self.max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._write_group(group)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _write_group(self, group: list[_Waiter]) -> None:
        assert self._transactions is not None
        rows = [row for waiting, _ in group for row in waiting]
        error: OutboxError | None = None
        try:
            await self._transactions.write(_insert_sync, rows)
            self.commits += 1
        except Exception as exc:
            # Disk full, locked past busy_timeout, file gone, or anything else: every caller
            # in the group hears about it (nothing of the group was committed), and the
            # writer lives on for the next group instead of leaving callers waiting forever.
            error = OutboxStoreError(f"outbox write failed: {exc}")
            error.__cause__ = exc
        else:
            if self._checkpointer is not None:
                self._checkpointer.wrote(len(rows))
        for _, done in group:
            if done.done():  # the caller was cancelled; its row may still be committed
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop()
    return None


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    # The Outbox checkpoints in the background (_Checkpointer), never inside a commit.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
    finally:
        cursor.close()
