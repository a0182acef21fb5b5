"""A cross-process lock file that queues an SQLite outbox's writers in the kernel.

SQLite's own write lock does not queue: a writer that finds it taken sleeps in the busy
handler (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms ...) and looks again, so a
writer that arrives during a 3 ms shipper transaction can wait 10 ms or more, and a
writer unlucky twice in a row 50 ms (measured: writer p99 21 ms, max 58 ms while the
shipper drained a backlog). Here every write transaction the package runs first takes
an exclusive ``flock`` on ``<database>-writelock`` (a file of its own beside the
database): a writer that finds it held sleeps in the kernel and is woken the moment it
is released, then takes SQLite's lock (``BEGIN IMMEDIATE``) at once. It is released as
soon as the transaction has committed or rolled back.

Who takes it (no code changes needed): :class:`outbox.Outbox` (its group commits), the
shipper (every settle/claim/cleanup/lease/note transaction, and a start-up migration
through :meth:`outbox.transactions.Transactions.locked`), anything else that runs
its writes through :class:`outbox.transactions.Transactions`. A service that calls
``record_usage`` inside its own transaction on its own engine does not take it (the
package cannot see where that transaction ends); it waits in SQLite's busy handler as
before, for shipper transactions that are short (each holds the write lock for one
batch's statements only). It may take it around its own transaction with
:meth:`WriteLock.held` or :meth:`WriteLock.held_async`; measured, that did not shorten
the tails of many concurrent session writers (README, "Recording usage"): the lock is
held across the event loop's turns between the transaction's statements.

A process that has to wait for the lock says so while it waits: it holds a shared POSIX
record lock on the lock file's first byte (:data:`WAITING_BYTE`; Linux keeps those apart
from ``flock``). The shipper, which takes the lock without waiting from its event loop
(:meth:`WriteLock.try_acquire`), looks at that byte first and lets a waiting writer go
before it: ``flock`` hands a released lock to nobody in particular, and a loop that
takes it again at once kept a woken writer out for a whole series of transactions.

The lock is advisory and only for fairness: SQLite's lock still decides who writes. If
the file cannot be opened (a read-only directory, another user's file), writes go on
without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator

logger = logging.getLogger("outbox.writelock")

SUFFIX = "-writelock"


def lock_path(database: str) -> str:
    return f"{database}{SUFFIX}"


class WriteLock:
    """The lock file of one SQLite database.

    ``flock`` locks belong to an open file: two instances (in one process or two) exclude
    each other, but two users of one instance would not (a second ``LOCK_EX`` on a file
    already locked returns at once, and the first release frees both). So one instance
    also queues its own users: threads behind a ``threading.Lock``, the tasks of its
    event loop behind an ``asyncio.Lock`` (one event loop per instance), and a process's
    request handlers may share one.
    """

    def __init__(self, database: str) -> None:
        self.path = lock_path(database)
        self._database = database
        self._fd: int | None = None
        self._unavailable = False
        self._guard = threading.Lock()  # opening and closing only
        self._users = threading.Lock()  # this instance's own users, one at a time
        self._tasks = asyncio.Lock()  # its event loop's tasks queue here, not in threads

    def _open(self) -> int | None:
        with self._guard:
            if self._fd is None and not self._unavailable:
                try:
                    # The database's own mode (owner-only by default, group access where an
                    # operator gave it), so every process that may write it may lock it.
                    mode = os.stat(self._database).st_mode & 0o666
                except OSError:
                    mode = 0o600
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
                except OSError as exc:
                    self._unavailable = True
                    logger.warning(
                        "cannot open the outbox write lock %s (%s): writers queue in SQLite's "
                        "busy handler instead",
                        self.path,
                        exc,
                        extra={"action": "write_lock_unavailable"},
                    )
            return self._fd

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the body (take it before ``BEGIN IMMEDIATE``)."""
        fd = self._open()
        if fd is None:
            yield
            return
        self._take_for_user(fd)
        try:
            yield
        finally:
            self._give_back(fd)

    def _take_for_user(self, fd: int) -> None:
        self._users.acquire()
        try:
            _take(fd)
        except BaseException:
            self._users.release()
            raise

    def _give_back(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._users.release()

    def try_acquire(self) -> bool:
        """Take the lock only if it is free and no other process waits for it (see the
        module docstring), without waiting; True also when there is no lock file to take
        (then SQLite's lock alone decides). :meth:`release` gives it back."""
        fd = self._open()
        if fd is None:
            return True
        if not self._users.acquire(blocking=False):
            return False
        if not writer_waiting(fd) and _take_if_free(fd):
            return True
        self._users.release()
        return False

    def release(self) -> None:
        """Give back a lock :meth:`try_acquire` took."""
        if self._fd is not None:
            self._give_back(self._fd)

    @contextlib.asynccontextmanager
    async def held_async(self) -> AsyncIterator[None]:
        """:meth:`held` for an event loop: the wait for the lock happens in a thread.

        Cancelled while waiting, it still waits for the thread's ``flock`` to return and
        then releases the lock, so a cancel never leaves the lock held.
        """
        fd = self._open()
        if fd is None:
            yield
            return
        async with self._tasks:
            taking = asyncio.ensure_future(asyncio.to_thread(self._take_for_user, fd))
            try:
                await asyncio.shield(taking)
            except asyncio.CancelledError:
                with contextlib.suppress(OSError):
                    await taking
                    self._give_back(fd)
                raise
            try:
                yield
            finally:
                self._give_back(fd)

    def close(self) -> None:
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


#: The byte of the lock file on which a process waiting for the lock holds a shared POSIX
#: record lock (``lockf``) while it waits. Linux keeps those apart from ``flock`` locks on
#: the same file, so this says "someone is waiting" without touching the lock itself.
WAITING_BYTE = 0


def _take_if_free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _take(fd: int) -> None:
    """Take the lock, waiting in the kernel if it is held; while waiting, say so."""
    if _take_if_free(fd):
        return  # nothing to announce (the usual case)
    announced = _announce(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        if announced:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, WAITING_BYTE)


def _announce(fd: int) -> bool:
    """Hold :data:`WAITING_BYTE` shared; it waits only while a probe (below) holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, WAITING_BYTE)
    except OSError:  # record locks unsupported on this file system: wait unannounced
        return False
    return True


def writer_waiting(fd: int) -> bool:
    """Whether another process waits for the lock of the file open as ``fd``.

    POSIX record locks belong to a process: this process's own waiting threads are not
    seen, and when one of a process's threads stops waiting, the mark of its others goes
    too (they still queue in the kernel, only unannounced).
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, WAITING_BYTE)
    except OSError as exc:
        # Held shared: someone announced a wait. Any other error: record locks do not
        # work here, and nobody can announce one.
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, WAITING_BYTE)
    return False
