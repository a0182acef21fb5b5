"""One shipper per outbox: the lease row, taken at start, renewed, dropped at the end.

The in-flight range recorded with the lease (``store.set_in_flight``) is the evidence
that rows were being published when a shipper died; whoever takes the lease next counts
an attempt on each of them, so a row that crashes the shipper reaches ``max_attempts``.

Losing the lease to another shipper ends the run with :class:`LeaseLost`, whichever path
finds out first (the keeper's renewal here, or the drain's next claim): the CLI exits 1
with the one line :data:`LEASE_LOST`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import leases, store
from outbox.transactions import Transactions
from shipper.errors import LeaseLost
from usage_runtime.signals import sleep_unless_stopped

logger = logging.getLogger("shipper")

T = TypeVar("T")

LEASE_NAME = "shipper"
#: What a shipper that lost its lease says as it stops (the message of LeaseLost).
LEASE_LOST = "lost the outbox lease to another shipper; stopping"


def holder_is_gone(owner: str) -> bool:
    """True only when ``owner`` (``host:pid:nonce``, see :class:`shipper.worker.Shipper`)
    names this host and a process id that is not running (or is a zombie): then nobody
    can renew the lease, and waiting out its time to live gains nothing. A holder on
    another host, or any doubt, means wait."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # another shipper in this very process: alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:  # killed but not yet reaped by its parent: it renews nothing either
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


async def write_through(
    db: Transactions | None,
    engine: AsyncEngine,
    body: Callable[..., T],
    /,
    *args: Any,
    **kwargs: Any,
) -> T:
    """``body(connection, ...)`` in one write transaction: through ``db``, behind the
    outbox's write lock file and on the event loop's thread when no writer waits
    (:meth:`Transactions.write_inline`), as every other shipper write, so a writer waits
    for it in the kernel for its few statements (measured: the lease taken statement by
    statement on the async engine held the lock file 12-14 ms as a shipper started; in
    the worker thread, beside a busy loop, up to 10 ms); else (no store opened yet) on
    the engine."""
    if db is not None:
        return await db.write_inline(body, *args, **kwargs)
    async with engine.begin() as conn:
        return await conn.run_sync(body, *args, **kwargs)


class Lease:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owner: str,
        ttl: float,
        stop: asyncio.Event,
        db: Transactions | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.ttl = ttl
        self._stop = stop
        # Renewals go through the shipper's short transactions when given (see _renew).
        self._db = db

    async def acquire(self) -> bool:
        """Wait until this shipper holds the lease (True) or a stop is asked for (False).
        On taking it, count an attempt on the rows the previous holder left in flight."""
        announced = False
        while not self._stop.is_set():
            now = time.time()
            try:
                counted, holder = await self._write(self._take, now)
            except SQLAlchemyError as exc:
                # Disk full, locked past busy_timeout: wait and try again, as the running
                # loop does, instead of exiting (a supervisor would restart us into it).
                logger.warning(
                    "cannot take the outbox lease: %s; retrying",
                    exc,
                    extra={"action": "lease_take_failed"},
                )
                await sleep_unless_stopped(self._stop, self.ttl / 3)
                continue
            if counted is not None:
                logger.info(
                    "holding the outbox lease as %s", self.owner, extra={"action": "lease_taken"}
                )
                if counted:
                    logger.warning(
                        "the previous shipper stopped with %d rows in flight; counted an "
                        "attempt on each",
                        counted,
                        extra={"action": "in_flight_recovered"},
                    )
                return True
            if not announced:
                who, until = holder or ("?", now)
                logger.warning(
                    "another shipper (%s) is shipping this outbox; waiting for its lease, "
                    "which expires in %.0f s unless renewed",
                    who,
                    until - now,
                    extra={"action": "lease_wait", "holder": who},
                )
                announced = True
            await sleep_unless_stopped(self._stop, self.ttl / 3)
        return False

    def _take(self, conn: Connection, now: float) -> tuple[int | None, tuple[str, float] | None]:
        """One try, in one transaction: the rows counted (None: not taken), and the holder
        seen when another shipper holds the lease."""
        if leases.take_lease(conn, name=LEASE_NAME, owner=self.owner, now=now, ttl=self.ttl):
            return store.recover_in_flight(conn, name=LEASE_NAME), None
        holder = leases.lease_holder(conn, name=LEASE_NAME)
        if holder is not None and holder_is_gone(holder[0]):
            return self._take_over(conn, holder[0], now), holder
        return None, holder

    def _take_over(self, conn: Connection, previous: str, now: float) -> int | None:
        """Take the lease of a holder known to be gone; the rows counted as in
        :meth:`acquire`, or None if someone else was quicker."""
        if not leases.take_over_lease(
            conn, name=LEASE_NAME, owner=self.owner, previous=previous, now=now, ttl=self.ttl
        ):
            return None
        logger.warning(
            "the shipper holding the outbox lease (%s) is gone: no process %s on this "
            "host; taking over at once",
            previous,
            previous.split(":")[1],
            extra={"action": "lease_taken_over", "holder": previous},
        )
        return store.recover_in_flight(conn, name=LEASE_NAME)

    async def _write(self, body: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await write_through(self._db, self.engine, body, *args, **kwargs)

    async def keep(self) -> None:
        """Renew the lease every third of its time to live until a stop; raise
        :class:`LeaseLost` if another shipper took it meanwhile (the shipper runs this as
        a side task: its end stops the run)."""
        while not self._stop.is_set():
            await sleep_unless_stopped(self._stop, self.ttl / 3)
            try:
                held = await self._renew()
            except SQLAlchemyError as exc:
                logger.warning(
                    "could not renew the lease: %s", exc, extra={"action": "lease_renew_failed"}
                )
                continue
            if not held:
                raise LeaseLost(LEASE_LOST)

    async def _renew(self) -> bool:
        """One renewal, through :func:`write_through` (see there)."""
        return await self._write(
            leases.take_lease, name=LEASE_NAME, owner=self.owner, now=time.time(), ttl=self.ttl
        )

    async def release(self) -> None:
        """Drop the lease as the run ends, first counting an attempt on rows still
        recorded in flight."""
        await self._write(self._drop)

    def _drop(self, conn: Connection) -> None:
        self._count_unsettled(conn)
        leases.drop_lease(conn, name=LEASE_NAME, owner=self.owner)

    def _count_unsettled(self, conn: Connection) -> None:
        """A clean stop settles everything first, so rows are still recorded in flight
        only when the run ends on an exception. Dropping the lease would drop that
        evidence, and a row that crashes the process would be retried for ever instead
        of reaching ``max_attempts``."""
        holder = leases.lease_holder(conn, name=LEASE_NAME)
        if holder is None or holder[0] != self.owner:
            return  # not ours (any more): its holder counts
        counted = store.recover_in_flight(conn, name=LEASE_NAME)
        if counted:
            logger.warning(
                "stopping with %d rows in flight; counted an attempt on each",
                counted,
                extra={"action": "in_flight_recovered"},
            )
