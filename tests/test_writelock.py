"""The outbox's write lock file: writers and the shipper queue in the kernel (flock)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox import Outbox
from outbox.sqlite import configure_sqlite, create_outbox_engine, sqlite_url
from outbox.transactions import Transactions
from outbox.writelock import WriteLock, lock_path, writer_waiting
from tests.fixtures.shipper import ShipperRunner, shipper_config, usage_args
from usage_demo.waiting import wait_until

_HOLDER = """
import sys
from outbox.writelock import WriteLock
with WriteLock(sys.argv[1]).held():
    print("held", flush=True)
    sys.stdin.readline()
"""


def _is_held(database: Path) -> bool:
    """Whether some other open file holds the lock (a non-blocking try of our own)."""
    fd = os.open(lock_path(str(database)), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


@contextmanager
def _held_by_another_process(database: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)


def test_the_lock_excludes_another_process_and_is_released_after(outbox_path: Path) -> None:
    assert not _is_held(outbox_path)
    with _held_by_another_process(outbox_path):
        assert _is_held(outbox_path)
    assert not _is_held(outbox_path)


def test_the_lock_file_gets_the_database_files_mode(outbox_path: Path) -> None:
    os.chmod(outbox_path, 0o640)
    lock = WriteLock(str(outbox_path))
    with lock.held():
        pass
    lock.close()
    assert stat.S_IMODE(os.stat(lock_path(str(outbox_path))).st_mode) == 0o640


def test_threads_sharing_one_instance_take_it_one_at_a_time(outbox_path: Path) -> None:
    # A second LOCK_EX on an open file already locked returns at once: without the
    # instance's own queue both threads would be inside together.
    lock = WriteLock(str(outbox_path))
    inside = threading.Event()
    entered = threading.Event()
    leave = threading.Event()

    def first() -> None:
        with lock.held():
            inside.set()
            leave.wait(10)

    def second() -> None:
        with lock.held():
            entered.set()

    holder = threading.Thread(target=first)
    holder.start()
    assert inside.wait(10)
    other = threading.Thread(target=second)
    other.start()
    try:
        assert not entered.wait(0.3), "a second thread entered while the first held the lock"
        assert not lock.try_acquire(), "try_acquire took a lock this instance's user holds"
    finally:
        leave.set()
        holder.join(10)
    assert entered.wait(10)
    other.join(10)
    assert not _is_held(outbox_path)
    lock.close()


async def test_tasks_sharing_one_instance_take_it_one_at_a_time(outbox_path: Path) -> None:
    lock = WriteLock(str(outbox_path))
    inside: list[int] = []
    most_inside = 0
    release_first = asyncio.Event()

    async def hold(n: int) -> None:
        nonlocal most_inside
        async with lock.held_async():
            inside.append(n)
            most_inside = max(most_inside, len(inside))
            assert _is_held(outbox_path)
            if n == 0:
                await release_first.wait()
            inside.remove(n)

    first = asyncio.create_task(hold(0))
    await wait_until(lambda: inside == [0], 10, message="the first task never got the lock")
    others = [asyncio.create_task(hold(n)) for n in range(1, 5)]
    done, _ = await asyncio.wait(others, timeout=0.3)
    assert not done, "a task entered while another task of the same instance held the lock"
    release_first.set()
    await asyncio.wait_for(asyncio.gather(first, *others), 10)
    assert most_inside == 1
    assert not _is_held(outbox_path)
    lock.close()


async def test_a_transaction_holds_the_lock_only_while_it_runs(outbox_path: Path) -> None:
    engine = create_outbox_engine(sqlite_url(outbox_path))
    db = Transactions(engine)
    try:
        seen = await db.write(lambda conn: _is_held(outbox_path))
        assert seen, "the write transaction ran without the lock"
        assert not _is_held(outbox_path)
        with pytest.raises(sa.exc.OperationalError):
            await db.write(lambda conn: conn.exec_driver_sql("SELECT * FROM no_such_table"))
        assert not _is_held(outbox_path), "a transaction that failed kept the lock"
    finally:
        await db.close()
        await engine.dispose()


async def test_outbox_writers_wait_for_the_lock_another_process_holds(outbox_path: Path) -> None:
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**usage_args(0))  # opened and migrated
        with _held_by_another_process(outbox_path):
            recording = asyncio.create_task(outbox.record(**usage_args(1)))
            done, _ = await asyncio.wait({recording}, timeout=0.5)
            assert not done, "Outbox committed while another process held the write lock"
        await asyncio.wait_for(recording, 10)


async def test_writes_go_on_when_the_lock_file_cannot_be_opened(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkdir(lock_path(str(outbox_path)))  # a directory cannot be opened for writing
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**usage_args(0))
        await outbox.record(**usage_args(1))
    warnings = [r for r in caplog.records if getattr(r, "action", "") == "write_lock_unavailable"]
    assert len(warnings) == 1


async def test_locked_waits_for_the_lock_and_a_cancel_leaves_it_free(outbox_path: Path) -> None:
    engine = create_outbox_engine(sqlite_url(outbox_path))
    db = Transactions(engine)

    async def take() -> None:
        async with db.locked():
            await asyncio.sleep(3600)  # held until cancelled

    try:
        with _held_by_another_process(outbox_path):
            waiting = asyncio.create_task(take())
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done
            waiting.cancel()  # cancelled while its thread waits in flock
            await asyncio.sleep(0)
        # The cancel takes effect once the thread has the lock (released at once).
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 10)
        await wait_until(lambda: not _is_held(outbox_path), 10, message="the lock left held")
        async with db.locked():
            assert _is_held(outbox_path), "locked() entered without the lock"
        assert not _is_held(outbox_path)
    finally:
        await db.close()
        await engine.dispose()


async def test_the_shipper_takes_its_lease_behind_the_lock_file(
    outbox_path: Path, nats_url: str, run_shipper: ShipperRunner
) -> None:
    # Its start-up transactions (migration check, lease) queue behind a writer holding
    # the lock file, as its drain's do, instead of making that writer's next commit wait
    # in SQLite's busy handler.
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**usage_args(0))
    with _held_by_another_process(outbox_path):
        shipper, _task = run_shipper.start(
            shipper_config(outbox_path, nats_url, exit_when_idle=False)
        )
        await asyncio.sleep(0)  # let it start
        done = await asyncio.to_thread(_lease_taken_within, outbox_path, 0.5)
        assert not done, "the shipper wrote its lease while another process held the lock"
    await wait_until(lambda: _lease_taken_within(outbox_path, 0), 10, message="no lease taken")
    shipper.stop()


def _lease_taken_within(database: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.closing(sqlite3.connect(database, timeout=0.05)) as conn:
            try:
                if conn.execute("SELECT count(*) FROM usage_outbox_lease").fetchone()[0]:
                    return True
            except sqlite3.OperationalError:
                pass  # locked or not made yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


async def test_opening_a_connection_on_an_existing_outbox_takes_no_write_lock(
    outbox_path: Path,
) -> None:
    # Setting auto_vacuum takes the write lock even when the file has that mode already:
    # each new connection of the shipper's (outside the lock file) made a writer arriving
    # meanwhile sleep in SQLite's busy handler. Only a new file gets it set.
    async with Outbox(sqlite_url(outbox_path)) as outbox:
        await outbox.record(**usage_args(0))
    holder = sqlite3.connect(outbox_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer in the middle of its commit
        engine = sa.create_engine(sqlite_url(outbox_path, asynchronous=False))
        configure_sqlite(engine, busy_timeout_ms=0, begin_immediate=False)
        try:
            with engine.connect() as conn:  # "database is locked" if connecting locks
                assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
        finally:
            engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- waiting writers go first -----------------------------------------------------------

_WAITER = """
import sys
from outbox.writelock import WriteLock
lock = WriteLock(sys.argv[1])
print("waiting", flush=True)
with lock.held():
    print("got it", flush=True)
    sys.stdin.readline()
"""

_ANNOUNCER = """
import fcntl, os, sys
from outbox.writelock import WAITING_BYTE, lock_path
fd = os.open(lock_path(sys.argv[1]), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_SH, 1, WAITING_BYTE)  # says it waits, holds no flock
print("announced", flush=True)
sys.stdin.readline()
"""


def _child(script: str, database: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _finish(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.wait(10) == 0


def test_a_process_waiting_for_the_lock_is_seen_and_goes_first(outbox_path: Path) -> None:
    lock = WriteLock(str(outbox_path))
    assert lock.try_acquire()
    fd = lock._fd
    assert fd is not None
    assert not writer_waiting(fd)
    waiter = _child(_WAITER, outbox_path)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
        wait_until_sync(lambda: writer_waiting(fd), 10, "the waiting writer was not seen")
        lock.release()
        assert waiter.stdout.readline().strip() == "got it"
        assert not writer_waiting(fd), "a writer holding the lock still looks waiting"
        assert not lock.try_acquire(), "taken while the writer held it"
    finally:
        _finish(waiter)
    assert lock.try_acquire()
    lock.release()
    lock.close()


def test_try_acquire_lets_an_announced_writer_go_first_even_with_the_lock_free(
    outbox_path: Path,
) -> None:
    # The moment between a release and the woken writer's flock: the lock is free, the
    # writer still says it waits, and a loop that took the lock again would keep it out.
    lock = WriteLock(str(outbox_path))
    announcer = _child(_ANNOUNCER, outbox_path)
    try:
        assert announcer.stdout is not None
        assert announcer.stdout.readline().strip() == "announced"
        assert not _is_held(outbox_path)
        assert not lock.try_acquire()
    finally:
        _finish(announcer)
    assert lock.try_acquire()
    lock.release()
    lock.close()


def wait_until_sync(condition: Callable[[], bool], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.005)


# -- write_inline -----------------------------------------------------------------------


def _thread_name(_conn: sa.Connection) -> str:
    return threading.current_thread().name


@pytest.fixture
async def outbox_db(outbox_path: Path) -> AsyncIterator[Transactions]:
    """The shipper's kind of :class:`Transactions` on the outbox file, closed after."""
    engine = create_outbox_engine(sqlite_url(outbox_path))
    db = Transactions(engine)
    try:
        yield db
    finally:
        await db.close()
        await engine.dispose()


async def test_write_inline_runs_on_the_callers_thread_holding_the_lock(
    outbox_path: Path, outbox_db: Transactions
) -> None:
    held = await outbox_db.write_inline(lambda conn: _is_held(outbox_path))
    assert held, "the inline transaction ran without the lock file"
    assert not _is_held(outbox_path)
    assert await outbox_db.write_inline(_thread_name) == threading.current_thread().name
    with pytest.raises(sa.exc.OperationalError):
        await outbox_db.write_inline(lambda conn: conn.exec_driver_sql("SELECT * FROM nope"))
    assert not _is_held(outbox_path), "a failed inline transaction kept the lock"


async def test_write_inline_queues_in_the_thread_behind_another_process(
    outbox_path: Path, outbox_db: Transactions
) -> None:
    with _held_by_another_process(outbox_path):
        writing = asyncio.create_task(outbox_db.write_inline(_thread_name))
        done, _ = await asyncio.wait({writing}, timeout=0.5)
        assert not done, "wrote while another process held the lock"
    assert (await asyncio.wait_for(writing, 10)).startswith("outbox-db")


async def test_write_inline_waits_for_a_writer_without_the_lock_file(
    outbox_path: Path, outbox_db: Transactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service's own transaction on its own engine holds SQLite's lock and no lock file:
    # the inline BEGIN IMMEDIATE cannot wait (that would stop the loop), so the write
    # goes to the thread, which waits in SQLite's busy handler.
    queued = asyncio.Event()
    write = outbox_db.write

    async def spy(body: Callable[..., str], *args: object) -> str:
        queued.set()
        return await write(body, *args)

    monkeypatch.setattr(outbox_db, "write", spy)
    service = sqlite3.connect(outbox_path, isolation_level=None)
    try:
        service.execute("BEGIN IMMEDIATE")
        writing = asyncio.create_task(outbox_db.write_inline(_thread_name))
        await asyncio.wait_for(queued.wait(), 10)
        assert not writing.done()
        service.execute("COMMIT")
        assert (await asyncio.wait_for(writing, 10)).startswith("outbox-db")
    finally:
        service.close()


async def test_a_write_looks_again_soon_for_the_lock_a_service_transaction_held(
    outbox_path: Path, outbox_db: Transactions
) -> None:
    # The worker thread's BEGIN IMMEDIATE does not sleep in SQLite's busy handler (after
    # a quarter second of waiting it looks every 100 ms): once the service's transaction
    # ends, it has the lock within a few polls of at most 2 ms. Five rounds, the median
    # gap judged (the busy handler's would be ~50 ms), so one stall of the machine passes.
    await outbox_db.write(_thread_name)  # the write engine's connection is open
    service = sqlite3.connect(outbox_path, isolation_level=None)
    gaps = []
    try:
        for _ in range(5):
            service.execute("BEGIN IMMEDIATE")
            writing = asyncio.create_task(outbox_db.write(lambda conn: time.monotonic()))
            done, _ = await asyncio.wait({writing}, timeout=0.3)
            assert not done, "the write began while another connection held SQLite's lock"
            released = time.monotonic()
            service.execute("COMMIT")
            gaps.append(await asyncio.wait_for(writing, 10) - released)
    finally:
        service.close()
    median = sorted(gaps)[2]
    assert median < 0.02, f"began {median * 1000:.1f} ms after the release (median of 5)"


async def test_a_write_gives_up_with_database_is_locked_after_the_busy_timeout(
    outbox_path: Path, outbox_db: Transactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import outbox.transactions

    monkeypatch.setattr(outbox.transactions, "WAIT_MOST", 0.2)
    service = sqlite3.connect(outbox_path, isolation_level=None)
    try:
        service.execute("BEGIN IMMEDIATE")
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            await asyncio.wait_for(outbox_db.write(_thread_name), 10)
    finally:
        service.execute("ROLLBACK")
        service.close()
    assert (await outbox_db.write(_thread_name)).startswith("outbox-db")
