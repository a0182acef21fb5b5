"""The shipper: the process around the drain.

Read top to bottom: :meth:`Shipper.run` (start, side tasks, the loop, shutdown). Each
turn of the loop is one named call: :meth:`Shipper.drain` (claim, publish, settle: the
state of its at most two batches lives in :class:`shipper.pipeline.Pipeline`), then
:meth:`Shipper.tidy` when the outbox ran short, then the poll pause; a burst run
(``exit_when_idle``) ends at the first idle turn with nothing left to tidy. Transient
trouble is retried with backoff around :meth:`drain` and shown in ``usage-shipper
status``, ``/readyz`` and the metrics.

Side tasks (the lease keeper) run beside the loop and are watched, as procrastinate's
worker watches its own: one that dies stops the shipper with one error line, and
:meth:`run` raises (exit 1 from the CLI) instead of the failure going unheard. Losing
the lease ends the run with :class:`LeaseLost` by either route (the keeper's renewal,
or the drain's next claim).

The outbound side is injected: ``Shipper(config, engine=..., link=...)`` takes any
:class:`shipper.link.Link` (default :class:`shipper.link.JetStreamLink`; the unit tier
uses :class:`shipper.testing.InMemoryLink`). Nothing is deleted from the outbox before
its PubAck; every other outcome leaves the row pending (released, or retried after its
backoff) or moves it to ``dead`` with the reason. The one-shipper lease is in
:mod:`shipper.lease`, retention in :mod:`shipper.tidy`, every statement in
:mod:`outbox.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import tenacity
from sqlalchemy import Connection
from sqlalchemy.exc import DatabaseError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import leases, migrate
from outbox.errors import OutboxStoreError
from outbox.sqlite import create_outbox_engine, sqlite_file
from outbox.transactions import Transactions
from shipper.config import ShipperConfig
from shipper.errors import ConfigError, LeaseLost, SideTaskDied, TransientError
from shipper.lease import Lease, write_through
from shipper.link import JetStreamLink, Link, LinkHooks
from shipper.metrics import ShipperMetrics, metrics_for
from shipper.pipeline import Pipeline
from shipper.stats import ShipperStats
from shipper.stream import STREAM_RISK_NOTE
from shipper.tidy import TIDY_PAUSE, Tidier
from usage_runtime.redact import redact_url
from usage_runtime.signals import sleep_unless_stopped

logger = logging.getLogger("shipper")

#: The outbox note (``outbox.leases.put_note``) naming the problem the shipper waits out.
PROBLEM_NOTE = "problem"
#: How a problem of the outbox database itself begins.
DATABASE_TROUBLE = "outbox database: "
#: Longest writing a note may hold up the loop (the database may be slow or full).
NOTE_TIMEOUT = 2.0
#: Seconds between two passive WAL checkpoints, each after a write transaction on the
#: database thread (see :mod:`outbox.transactions` for what was measured).
CHECKPOINT_INTERVAL = 0.25


class Shipper:
    def __init__(
        self,
        config: ShipperConfig,
        *,
        engine: AsyncEngine | None = None,
        link: Link | None = None,
    ) -> None:
        self.config = config
        self.stats = ShipperStats()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._engine = engine
        self._own_engine = engine is None
        self._stop = asyncio.Event()
        self._failing_since: float | None = None
        # Served on config.metrics_port; hooks that do nothing when it is unset.
        self.metrics: ShipperMetrics = metrics_for(config)
        #: The outbound port: JetStream unless another link is given.
        self.link: Link = link if link is not None else JetStreamLink(config)
        self.link.bind(
            LinkHooks(
                stop=self._stop, stats=self.stats, metrics=self.metrics, on_trouble=self._trouble
            )
        )
        self._db: Transactions | None = None  # the claim/settle path (see _open_store)
        # All three made with the store, in _open_store:
        self._lease: Lease | None = None
        self._tidier: Tidier | None = None
        self._pipeline: Pipeline | None = None
        # Why a side task ended the run (raised by run() once the shipper has stopped).
        self._side_failure: BaseException | None = None
        self._noted_stream_risk: str | None = None  # None: not written by this run yet
        # The transient problem being backed off from, as `usage-shipper status` shows it
        # (the "problem" note) and /readyz says it; None while shipping works.
        self._problem: str | None = None
        self._noted_problem: str | None = None  # what the note says now ("" none)
        self._noting: asyncio.Future[None] | None = None  # a note written meanwhile

    def __repr__(self) -> str:
        return f"<Shipper {self.owner} {self.stats}>"

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "Shipper.run() opens the engine"
        return self._engine

    @property
    def lease(self) -> Lease:
        assert self._lease is not None, "Shipper.run() opens the store"
        return self._lease

    @property
    def tidier(self) -> Tidier:
        assert self._tidier is not None, "Shipper.run() opens the store"
        return self._tidier

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "Shipper.run() opens the store"
        return self._pipeline

    @property
    def db(self) -> Transactions:
        """Claims, settlements and cleanup: each transaction run whole in one thread, so
        SQLite's write lock is held only while its statements run."""
        assert self._db is not None, "Shipper.run() opens the store"
        return self._db

    def stop(self) -> None:
        """Ask the loop to stop after the batch in flight; safe from a signal handler.

        From here on the shipper claims nothing more and has ``shutdown_timeout`` seconds
        to collect outstanding PubAcks and close the connection, however stuck NATS is.
        """
        self._stop.set()
        self.link.stop_by(time.monotonic() + self.config.shutdown_timeout)

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> ShipperStats:
        """Ship until :meth:`stop` (or, with ``exit_when_idle``, until nothing is due).

        Raises :class:`LeaseLost` when another shipper took the lease, and
        :class:`SideTaskDied` when a side task died, after stopping cleanly."""
        side_tasks: list[asyncio.Task[None]] = []
        try:
            if not await self._start():
                return self.stats
            side_tasks = self._start_side_tasks()
            while not self._stop.is_set():
                shipped = await self.drain()  # claim, publish, settle
                if shipped is None:
                    break
                if shipped >= self.config.batch_size:
                    continue  # more is due at once
                idle = shipped == 0 and self.config.exit_when_idle
                if await self.tidy(force=idle):
                    continue
                if idle:
                    break  # burst mode: nothing due, nothing to tidy
                # The next drain's read is the poll: it takes no write lock, so it can
                # run every poll_interval without slowing writers.
                await self._sleep(self.config.poll_interval)
            if self._side_failure is not None:
                raise self._side_failure
        except LeaseLost as exc:
            logger.error("%s", exc, extra={"action": "lease_lost"})
            raise
        finally:
            await _cancel(side_tasks)
            await self.metrics.stop()
            await self._shutdown()
        return self.stats

    async def _start(self) -> bool:
        """Open the engine, serve metrics, open the store and take the lease; False when
        stopped meanwhile."""
        if self._engine is None:
            self._engine = create_outbox_engine(self.config.database_url)
        # Served first: /readyz can say what the start-up waits for (a missing file).
        await self.metrics.start(self.engine)
        return await self._open_store() and await self.lease.acquire()

    async def tidy(self, *, force: bool) -> bool:
        """One retention/cleanup step (see :class:`Tidier`); True when there may be more,
        after a short pause in which writers get the lock."""
        if not await self.tidier.step(force=force):
            return False
        await self._sleep(TIDY_PAUSE)
        return True

    # -- side tasks --------------------------------------------------------------------

    def _start_side_tasks(self) -> list[asyncio.Task[None]]:
        """Tasks beside the loop, each watched by the last one (see _monitor_side_tasks)."""
        side_tasks = [asyncio.create_task(self.lease.keep(), name="lease-keeper")]
        monitor = asyncio.create_task(
            self._monitor_side_tasks(side_tasks), name="side-task-monitor"
        )
        return [*side_tasks, monitor]

    async def _monitor_side_tasks(self, side_tasks: list[asyncio.Task[None]]) -> None:
        """Stop the shipper when a side task ends while it runs: with the side task's
        LeaseLost, or with SideTaskDied naming the task and its error (one line)."""
        done, _ = await asyncio.wait(side_tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is None and self._stop.is_set():
                continue  # ended with the run
            if isinstance(error, LeaseLost):
                self._side_failure = error
            else:
                why = f"{type(error).__name__}: {error}" if error is not None else "it returned"
                self._side_failure = SideTaskDied(f"side task {task.get_name()} died ({why})")
                self._side_failure.__cause__ = error
                logger.error("%s; stopping", self._side_failure, extra={"action": "side_task_died"})
                if error is not None:
                    logger.debug("the side task's traceback", exc_info=error)
            self.stop()
            return

    async def drain(self) -> int | None:
        """Claim, publish and settle until the outbox reads short (:meth:`Pipeline.drain`);
        the rows claimed, or None when a stop came while backing off from trouble."""
        return await self._step_with_backoff()

    async def _step_with_backoff(self) -> int | None:
        """One step, retried with capped exponential backoff and jitter while JetStream is
        unreachable; None when a stop was asked for meanwhile."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            # 50 ms doubling up to the cap, plus up to a tenth of the cap of jitter.
            # (wait_exponential_jitter's default jitter added up to a whole second to
            # every wait, and its `initial` is deprecated.)
            wait=tenacity.wait_exponential(multiplier=0.05, max=self.config.backoff_cap)
            + tenacity.wait_random(0, self.config.backoff_cap / 10),
            stop=tenacity.stop_when_event_set(self._stop),  # type: ignore[arg-type]
            sleep=self._backoff_sleep,
            before_sleep=self._log_backoff,
            reraise=True,
        )
        try:
            shipped: int = await retrying(self._step)
        except TransientError:
            return None  # stopped while backing off; rows were already handed back
        if self._failing_since is not None:
            logger.info(
                "shipping again after %.1f s of trouble",
                time.time() - self._failing_since,
                extra={"action": "backoff_ended"},
            )
            self._failing_since = None
            self._problem = None
            self.metrics.problem(None, None)
        await self._note_problem()
        return shipped

    def _trouble(self, text: str) -> None:
        """The link meets ``text`` while connecting (not yet given up)."""
        self.stats.last_error = text
        if text != self._problem:
            self._problem = text
            self.metrics.problem(text, time.time())
            self._noting = asyncio.ensure_future(self._note_problem())

    async def _backoff_sleep(self, seconds: float) -> None:
        await self._note_problem()
        await self._sleep(seconds)

    async def _note_problem(self) -> None:
        """Tell ``usage-shipper status`` the problem being waited out, on change. A
        problem of the outbox database itself is not written there (it is what fails);
        status shows it from the database's own answer. Best effort: a note never stops
        the shipper."""
        text = self._problem or ""
        if text == (self._noted_problem or "") and self._noted_problem is not None:
            return
        if text.startswith(DATABASE_TROUBLE):
            return
        if await self._write_note(PROBLEM_NOTE, text):
            self._noted_problem = text

    async def _write_note(self, name: str, text: str) -> bool:
        """Put note ``name`` (clear it when ``text`` is empty); False when the database
        could not take it in time. Best effort: the log and the metrics say it already,
        and a full disk or a long lock must not stop the shipping; the caller tries again
        on its next change or step."""
        try:
            async with asyncio.timeout(NOTE_TIMEOUT):
                await write_through(self._db, self.engine, _set_note, name, text)
        except (SQLAlchemyError, TimeoutError) as exc:
            logger.debug("could not write the %s note: %s", name, exc)
            return False
        return True

    async def _step(self) -> int:
        if self._stop.is_set():
            return 0
        await self.link.ensure()
        await self._note_stream()
        try:
            return await self.pipeline.drain()
        except SQLAlchemyError as exc:
            # Locked past busy_timeout, disk full on the delete: the rows are still there
            # and the acknowledged ones will come back as JetStream duplicates.
            raise TransientError(f"{DATABASE_TROUBLE}{exc}") from exc

    # -- store, shutdown --------------------------------------------------------------

    async def _note_stream(self) -> None:
        """Tell ``usage-shipper status`` what can lose events on the stream, on change."""
        choice = self.link.stream
        text = choice.risk_text if choice is not None else ""
        if text == self._noted_stream_risk:
            return
        if await self._write_note(STREAM_RISK_NOTE, text):
            self._noted_stream_risk = text

    async def _wait_for_file(self) -> bool:
        """An SQLite outbox file that does not exist is not created here: a shipper
        pointed at the wrong path would ship an empty outbox and look healthy. Say where
        it looks and wait for the service (or ``usage-shipper migrate``) to create it;
        False when stopped meanwhile. A burst run has nothing to wait for: one line."""
        path = sqlite_file(self.config.database_url)
        if path is None or _exists(path):
            return True
        where = _absolute(path)
        if self.config.exit_when_idle:
            raise ConfigError(
                f"no outbox database at {where}: point --database-url / USAGE_OUTBOX_URL at "
                "the service's outbox, or create it with usage-shipper migrate"
            )
        text = (
            f"no outbox database at {where}: waiting for the service to create it (or "
            "usage-shipper migrate); check --database-url / USAGE_OUTBOX_URL"
        )
        logger.warning(text, extra={"action": "store_missing"})
        self._problem = self.stats.last_error = text
        self.metrics.problem(text, time.time())
        while not _exists(path):
            if self._stop.is_set():
                return False
            await self._sleep(min(1.0, self.config.backoff_cap))
        logger.info("outbox %s appeared", where, extra={"action": "store_appeared"})
        self._problem = None
        self.metrics.problem(None, None)
        return True

    async def _open_store(self) -> bool:
        """Open (and migrate or check) the outbox; False when stopped meanwhile."""
        if not await self._wait_for_file():
            return False
        if self._db is None:
            # WAL checkpoints after the write lock is dropped, not inside a commit that
            # holds it (SQLite's automatic checkpoint would make writers wait for it).
            self._db = Transactions(self.engine, checkpoint_interval=CHECKPOINT_INTERVAL)
            self._lease = Lease(
                self.engine,
                owner=self.owner,
                ttl=self.config.lease_ttl,
                stop=self._stop,
                db=self._db,
            )
            self._tidier = Tidier(self.config, self.engine, self._db, self.stats)
            self._pipeline = Pipeline(
                self.config,
                db=self._db,
                link=self.link,
                owner=self.owner,
                stats=self.stats,
                metrics=self.metrics,
                stopping=self._stop.is_set,
            )
        announced = False
        while True:
            try:
                # Checked with a plain read first: an outbox at the head (the common case)
                # takes no write lock at all (measured: the check in a write transaction
                # held the lock file 12-13 ms as a shipper started, the longest wait of a
                # writer in bench.retention). Otherwise a writer queues behind the lock
                # file, not in SQLite's busy handler.
                if await self._db.read(migrate.at_head):
                    prepared = "migrated"
                else:
                    prepared = await migrate.prepare_engine(self.engine, lock=self._db.locked())
                if prepared == "host":
                    logger.info(
                        "the outbox tables belong to the service (made from outbox.metadata); "
                        "they match this version's schema, so they are used as they are",
                        extra={"action": "store_host_owned"},
                    )
                return True
            except SQLAlchemyError as exc:
                # A full disk or a lock held past busy_timeout is a state to wait out, as
                # the running loop does; exiting would only make a supervisor restart us
                # into the same wall. A file that is not a database (or is corrupt) never
                # becomes one: that ends the run with one line.
                if _permanent(exc):
                    raise OutboxStoreError(
                        f"cannot use the outbox {redact_url(self.config.database_url)}: "
                        f"{getattr(exc, 'orig', None) or exc}"
                    ) from exc
                if self._stop.is_set():
                    raise
                if not announced:
                    logger.warning(
                        "cannot open the outbox yet: %s; retrying",
                        exc,
                        extra={"action": "store_open_failed"},
                    )
                    announced = True
                await self._sleep(self.config.backoff_cap)

    async def _shutdown(self) -> None:
        if self._noting is not None:
            await asyncio.gather(self._noting, return_exceptions=True)
        await self.link.close()
        if self._db is not None:
            if self._pipeline is not None:
                # Write what is still held back (the last batches' acks); a batch whose
                # outcome is unknown stays recorded in flight, to be charged an attempt.
                with contextlib.suppress(SQLAlchemyError, LeaseLost):
                    await self._pipeline.settle_all()
            if self._lease is not None:  # before the lock file closes with the thread
                with contextlib.suppress(SQLAlchemyError):
                    await self.lease.release()
            await self._db.close()
        if self._engine is not None and self._own_engine:
            await self._engine.dispose()
        logger.info("stopped %s", self.stats.summary(), extra={"action": "stopped"})

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless_stopped(self._stop, seconds)

    def _log_backoff(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self.stats.last_error = str(error)
        if str(error) != self._problem or self._failing_since is None:
            self._problem = str(error)
            shown = self._problem
            if shown.startswith(DATABASE_TROUBLE) and error is not None:
                # A driver's message can quote SQL parameters: /readyz gets the type only.
                shown = f"{DATABASE_TROUBLE}{type(error.__cause__ or error).__name__}"
            self.metrics.problem(shown, time.time())
        if self._failing_since is None:
            self._failing_since = time.time()
            logger.warning(
                "backing off: %s",
                error,
                extra={"action": "backoff_started"},
            )
        else:
            logger.debug("still backing off (attempt %d): %s", state.attempt_number, error)


def _permanent(exc: SQLAlchemyError) -> bool:
    """A database error waiting cannot fix: SQLite's "file is not a database" and
    "database disk image is malformed" are plain DatabaseErrors; locks, a full disk and
    I/O trouble are OperationalErrors, worth retrying."""
    return isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)


def _exists(path: str) -> bool:
    return Path(path).exists()  # one stat: too quick to be worth a thread


def _absolute(path: str) -> Path:
    return Path(path).resolve()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _set_note(conn: Connection, name: str, text: str) -> None:
    """Put note ``name``; clear it when ``text`` is empty."""
    if text:
        leases.put_note(conn, name, text, now=time.time())
    else:
        leases.clear_note(conn, name)
