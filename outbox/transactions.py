"""Short transactions that hold SQLite's write lock only while their statements run.

Through aiosqlite each statement is a hop to the connection's thread and back to the
event loop, and between ``BEGIN IMMEDIATE`` and ``COMMIT`` the loop runs whatever else is
ready (a burst of PubAcks, a hundred request handlers). The write lock, which every
process writing the file queues on, stays held all that while, and SQLite's busy handler
makes the others sleep in steps of up to 100 ms while they wait for it. Measured with a
writer process at 1,000 events/s beside the shipper: commit-to-PubAck p99 130 ms with
every transaction on aiosqlite, 30 ms with the writer's group commits run as below.

:class:`Transactions` runs a whole transaction body (a plain function of a sync
:class:`~sqlalchemy.Connection`) in one worker thread on a sync engine for the same
SQLite file, so the lock is held for the body's own statements and nothing else. On any
other database (or in-memory SQLite, which a second engine would not see) the body runs
through the async engine's ``run_sync``: same code, same transaction semantics.

On an SQLite file each write transaction also holds the outbox's write lock file
(:mod:`outbox.writelock`), taken before ``BEGIN IMMEDIATE``: writers and the shipper
queue for the file in the kernel instead of polling in SQLite's busy handler; one that
then finds SQLite's lock held by a writer without the lock file (a service's own
transaction) looks again every 0.2-2 ms (:func:`_begin`) rather than sleeping in the busy
handler with the lock file held. With
``checkpoint_interval`` the write connection's automatic WAL checkpoint (which runs
inside the commit that fills the WAL past 1,000 pages, so with that lock still held) is
off, and a ``PASSIVE`` checkpoint runs after a write transaction once that many seconds
have passed since the last one, on the same thread, once the lock is dropped, as a job of
its own: the write's caller does not wait for it.

:meth:`Transactions.write_inline` runs a short body on the caller's own thread (the
shipper's event loop) instead, when the lock file and SQLite's lock are both free at once
and no other process waits for them (:func:`outbox.writelock.writer_waiting`). In the
worker thread every return from SQLite's C code waits for the interpreter lock while the
event loop runs Python, and waits holding the write lock (a 100-row delete that took
0.12 ms alone took 5.3 ms beside a busy loop); on the loop's own thread nothing competes
for it, so the lock is held for SQLite's work only. A writer that waits is let go first:
``write_inline`` looks again a moment later, and then queues in the thread.

The checkpoints run on the worker thread (billing runs its own from a connection beside
it, :mod:`outbox.checkpoints`); a ``PASSIVE`` checkpoint waits for no writer, so inline
writes go on beside it. Measured with ``bench.retention --quick`` (a 100,000-row drain
with a writer beside it) and the ``bench.shipper`` drain, back-to-back runs on 2 cores:
a checkpoint after every write transaction kept the WAL to +8 MiB but its fsyncs held
the drain to 13-15k/s (7.0-7.7 s); every 0.25 s, 20-24k/s (4.5 s), but the WAL grew by
126 MiB, as checkpoints between bursts of writes rarely let SQLite start it over. So
once a checkpoint reports more than :data:`WAL_FRAMES_LIMIT` frames, they run after every
write again until it has started over: +23 MiB, 20-22k/s, 4.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.sqlite import DEFAULT_BUSY_TIMEOUT_MS, create_outbox_sync_engine, sqlite_file
from outbox.writelock import WriteLock

T = TypeVar("T")
Body = Callable[..., T]


class Transactions:
    """Run transaction bodies for ``engine``'s database; see the module docstring.

    Bodies run one at a time, in order, on one thread: ``write`` in a transaction that
    takes the write lock up front (``BEGIN IMMEDIATE``), ``read`` on a connection that
    takes none (in WAL mode a read blocks no writer).
    """

    def __init__(self, engine: AsyncEngine, *, checkpoint_interval: float | None = None) -> None:
        self.engine = engine
        self.write_engine: sa.Engine | None = None
        self._read_engine: sa.Engine | None = None
        self._inline_engine: sa.Engine | None = None
        self._inline_lock: WriteLock | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock: WriteLock | None = None
        self._startup_lock: WriteLock | None = None
        self._checkpoints: _Checkpoints | None = None
        database = sqlite_file(engine.url)
        if database is not None:
            self._lock = WriteLock(database)
            self._startup_lock = WriteLock(database)
            if checkpoint_interval is not None:
                self._checkpoints = _Checkpoints(checkpoint_interval)
            url = engine.url.set(drivername="sqlite")
            self.write_engine = create_outbox_sync_engine(url)
            # Once a connection is set up (its pragmas wait as usual: a new file's switch
            # to WAL may meet another process doing the same), its BEGIN IMMEDIATE looks
            # again every 0.2-2 ms (_begin) instead of sleeping in SQLite's busy handler.
            event.listen(self.write_engine, "connect", _no_busy_wait)
            self._inline_lock = WriteLock(database)
            # Its BEGIN IMMEDIATE must not wait: it runs on the event loop's thread.
            self._inline_engine = create_outbox_sync_engine(
                url, busy_timeout_ms=0, pool_size=1, max_overflow=0
            )
            if checkpoint_interval is not None:
                for writing in (self.write_engine, self._inline_engine):
                    event.listen(writing, "connect", _no_autocheckpoint)
            self._read_engine = create_outbox_sync_engine(
                url, begin_immediate=False, pool_size=1, max_overflow=0
            )
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the write lock file (SQLite) around a write transaction made elsewhere, on
        the async engine: the shipper's start-up migration, when the outbox needs one.
        Without it a writer arriving meanwhile waits in SQLite's busy handler (measured:
        a 34 ms commit as a shipper started). Its own lock instance (its own open file),
        so it also queues behind this object's thread."""
        if self._startup_lock is None:
            yield
            return
        async with self._startup_lock.held_async():
            yield

    async def write(self, body: Body[T], /, *args: Any, **kwargs: Any) -> T:
        """``body(connection, *args, **kwargs)`` in one write transaction; its result."""
        if self.write_engine is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(body, *args, **kwargs)
        written: tuple[T, bool] = await self._in_thread(
            _write, self.write_engine, self._lock, self._checkpoints, body, args, kwargs
        )
        result, checkpoint_due = written
        if checkpoint_due:
            self._queue_checkpoint()
        return result

    async def write_inline(self, body: Body[T], /, *args: Any, **kwargs: Any) -> T:
        """:meth:`write` for short bodies on an SQLite file, run right here on the event
        loop's thread when the lock file and SQLite's write lock are both free at once
        and no other process waits for them (see the module docstring); when one does,
        it goes first: this waits :data:`INLINE_RETRY_DELAY` and looks again, and after
        :data:`INLINE_TRIES` looks queues as :meth:`write` does."""
        engine, lock = self._inline_engine, self._inline_lock
        if engine is None or lock is None:
            return await self.write(body, *args, **kwargs)
        for tries_left in range(INLINE_TRIES - 1, -1, -1):
            if lock.try_acquire():
                try:
                    written = _write_now(engine, body, args, kwargs)
                finally:
                    lock.release()
                if written is not None:
                    if self._checkpoints is not None and self._checkpoints.due():
                        self._queue_checkpoint()
                    return written[0]
            if tries_left:
                await asyncio.sleep(INLINE_RETRY_DELAY)
        return await self.write(body, *args, **kwargs)

    def _queue_checkpoint(self) -> None:
        """A checkpoint on the worker thread, as a job of its own: the caller has its
        result now, not after the checkpoint's fsyncs (about 20 ms each while a backlog
        drained, measured: a tenth of the drain's time). Not once close() has begun: the
        last connection's close checkpoints."""
        checkpoints, executor = self._checkpoints, self._executor
        if executor is not None and self.write_engine is not None and checkpoints is not None:
            executor.submit(_checkpoint_into, self.write_engine, checkpoints)

    async def read(self, body: Body[T], /, *args: Any, **kwargs: Any) -> T:
        """``body(connection, *args, **kwargs)`` on a connection that takes no write lock."""
        if self._read_engine is None:
            async with self.engine.connect() as conn:
                try:
                    return await conn.run_sync(body, *args, **kwargs)
                finally:
                    await conn.rollback()
        return await self._in_thread(_read, self._read_engine, body, args, kwargs)

    async def read_inline(self, body: Body[T], /, *args: Any, **kwargs: Any) -> T:
        """:meth:`read`, but on an SQLite file run right here, on the event loop's thread.

        For a short indexed read (the shipper's claim): in a worker thread, each row's
        ``sqlite3_step`` gives up the GIL and must win it back from a busy event loop,
        which turned a 1 ms read of 1,000 rows into 20 ms. A WAL read takes no lock a
        writer holds, so it does not wait on them.
        """
        if self._read_engine is None:
            return await self.read(body, *args, **kwargs)
        return _read(self._read_engine, body, args, kwargs)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        # A cancelled caller does not stop the body: it finishes (commits or rolls back)
        # in its thread, as a statement cut off half-way could not.
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    async def close(self) -> None:
        """Release the connections and the thread (after the body under way, if any)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        engines = [
            e for e in (self.write_engine, self._read_engine, self._inline_engine) if e is not None
        ]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, _dispose, engines)
        executor.shutdown(wait=False)
        for lock in (self._lock, self._startup_lock, self._inline_lock):
            if lock is not None:
                lock.close()


#: :meth:`Transactions.write_inline`: looks at the locks before it queues in a thread, and
#: the wait between two looks (a writer woken by the kernel needs a moment to run).
INLINE_TRIES = 5
INLINE_RETRY_DELAY = 0.001

#: WAL frames (pages) past which checkpoints run after every write transaction until
#: SQLite has started the WAL over: ~16 MiB at 4 KiB pages (see the module docstring).
WAL_FRAMES_LIMIT = 4096


class _Checkpoints:
    """When the next checkpoint is due. Asked by the worker thread and by inline writes on
    the event loop's thread: a lost update between them only moves one checkpoint."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = time.monotonic()
        self.catching_up = False  # the WAL was past WAL_FRAMES_LIMIT at the last one

    def due(self) -> bool:
        now = time.monotonic()
        if not self.catching_up and now - self.last < self.interval:
            return False
        self.last = now
        return True

    def done(self, wal_frames: int | None) -> None:
        self.catching_up = wal_frames is not None and wal_frames > WAL_FRAMES_LIMIT


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")


def _write(
    engine: sa.Engine,
    lock: WriteLock | None,
    checkpoints: _Checkpoints | None,
    body: Body[T],
    args: tuple[Any, ...],
    kwargs: Any,
) -> tuple[T, bool]:
    """The body's result, and whether a checkpoint is due (the caller queues it)."""
    with lock.held() if lock is not None else contextlib.nullcontext(), _begin(engine) as conn:
        result = body(conn, *args, **kwargs)
    return result, checkpoints is not None and checkpoints.due()


#: How a write transaction waits for SQLite's lock held by a writer that takes no lock
#: file (a service's own transaction): it looks again after 0.2 ms, doubling to 2 ms,
#: for at most as long as the engines' busy_timeout. SQLite's busy handler sleeps 1, 2,
#: 5, 10, 15, 20, 25 ... 100 ms between looks, and a writer holding the lock file while
#: it slept held every other Outbox writer and the shipper up behind it (NATS-outage
#: scenario, Outbox writers beside session writers: p50 9-20 ms, against 4-5 ms for the
#: session writers themselves).
POLL_FIRST, POLL_MOST = 0.0002, 0.002
WAIT_MOST = DEFAULT_BUSY_TIMEOUT_MS / 1000


@contextlib.contextmanager
def _begin(engine: sa.Engine) -> Iterator[sa.Connection]:
    """``engine.begin()`` for an engine with busy_timeout 0, retried while SQLite's lock
    is taken (``SQLITE_BUSY``) until :data:`WAIT_MOST` has passed."""
    deadline = time.monotonic() + WAIT_MOST
    delay = POLL_FIRST
    while True:
        conn = engine.connect()
        try:
            transaction = conn.begin()  # BEGIN IMMEDIATE
        except sa.exc.OperationalError as exc:
            conn.close()
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, POLL_MOST)
            continue
        with conn, transaction:
            yield conn
        return


def _no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout = 0")


def _busy(exc: sa.exc.OperationalError) -> bool:
    return getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


def _write_now(
    engine: sa.Engine, body: Body[T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[T] | None:
    """``(result,)`` of the body in a transaction begun without waiting, or None when
    SQLite's write lock was taken (by a writer that takes no lock file: a service's own
    transaction)."""
    with engine.connect() as conn:
        try:
            transaction = conn.begin()  # BEGIN IMMEDIATE, with busy_timeout 0
        except sa.exc.OperationalError:
            return None
        with transaction:
            return (body(conn, *args, **kwargs),)


def _checkpoint_into(engine: sa.Engine, checkpoints: _Checkpoints) -> None:
    checkpoints.done(_checkpoint(engine))


def _checkpoint(engine: sa.Engine) -> int | None:
    """A passive checkpoint (it waits for no writer or reader) outside any transaction;
    the frames in the WAL as it reports them (None when it failed)."""
    raw = engine.raw_connection()
    try:
        rows = raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
        return int(rows[0][1]) if rows else None
    except sqlite3.Error:
        return None  # the next one copies what this one could not
    finally:
        raw.close()


def _read(engine: sa.Engine, body: Body[T], args: tuple[Any, ...], kwargs: Any) -> T:
    with engine.connect() as conn:
        return body(conn, *args, **kwargs)


def _dispose(engines: list[sa.Engine]) -> None:
    for engine in engines:
        engine.dispose()
