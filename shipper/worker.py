"""The shipper: claim due rows, publish them to JetStream, settle what the acks say.

Read top to bottom: :meth:`Shipper.run` (start-up, the loop, shutdown), :meth:`_step`
(connect if needed, then :meth:`drain`), :meth:`drain` (claim, publish, settle, with the
database work of one batch overlapping the publishing of the one before).
Nothing is deleted from the outbox before its PubAck; every other outcome leaves the row
pending (released, or retried after its backoff) or moves it to ``dead`` with the reason.

The parts it drives live apart: the connection in :mod:`shipper.link`, the publishing
in :mod:`shipper.publisher`, the one-shipper lease in :mod:`shipper.lease`, retention
in :mod:`shipper.tidy`, and every statement in :mod:`outbox.store`.
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

from outbox import migrate, store
from outbox.errors import OutboxStoreError
from outbox.sqlite import create_outbox_engine, sqlite_file
from outbox.transactions import Transactions
from shipper.batch import Ahead, Batch, Flight, Settlement, retry_at
from shipper.config import ShipperConfig
from shipper.errors import ConfigError, LeaseLost, TransientError
from shipper.lease import LEASE_NAME, Lease
from shipper.link import JetStreamLink
from shipper.metrics import ShipperMetrics, metrics_for
from shipper.publisher import Outcome
from shipper.rows import Refusal, to_message
from shipper.stats import ShipperStats
from shipper.stream import STREAM_RISK_NOTE
from shipper.tidy import TIDY_PAUSE, Tidier
from usage_runtime.redact import redact_url
from usage_runtime.signals import sleep_unless_stopped

logger = logging.getLogger("shipper")

#: The outbox note (``outbox.store.put_note``) naming the problem the shipper waits out.
PROBLEM_NOTE = "problem"
#: How a problem of the outbox database itself begins.
DATABASE_TROUBLE = "outbox database: "
#: Longest writing a note may hold up the loop (the database may be slow or full).
NOTE_TIMEOUT = 2.0
#: Write transactions between two passive WAL checkpoints (see Transactions): with a
#: writer committing beside a 100,000-row drain the WAL peaked at 89 MiB with 4, 20 with 1.
CHECKPOINT_EVERY = 1
#: Acknowledged rows settled per write transaction at most: measured on the 2-core box,
#: deleting 1,000 rows held the write lock 8-30 ms; 250 held it p99 18-52 ms under load
#: and 100 p99 9 ms, max 20 ms (bench.retention, docs/retention.md).
SETTLE_CHUNK = 100


class Shipper:
    def __init__(self, config: ShipperConfig, *, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self.stats = ShipperStats()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._engine = engine
        self._own_engine = engine is None
        self._stop = asyncio.Event()
        self._failing_since: float | None = None
        # Served on config.metrics_port; hooks that do nothing when it is unset.
        self.metrics: ShipperMetrics = metrics_for(config)
        self._link = JetStreamLink(
            config,
            stop=self._stop,
            stats=self.stats,
            metrics=self.metrics,
            on_trouble=self._trouble,
        )
        self._db: Transactions | None = None  # the claim/settle path (see _open_store)
        # Both made with the store, in _open_store:
        self._lease: Lease | None = None
        self._tidier: Tidier | None = None
        # Outcomes known and not yet written: the next transaction writes them (after an
        # error, the next drain's, or the shutdown's), and claims leave their rows out.
        self._unsettled = Settlement()
        # A batch was recorded in flight and its outcome is not known: if the run ends
        # now, its rows are charged an attempt (see Lease.release).
        self._outcome_unknown = False
        self._span: tuple[int, int] | None = None  # the in-flight range the lease records
        # Publish a batch while the one before waits for its acks only when both fit in
        # the in-flight window together.
        self._overlap = 2 * config.batch_size <= config.max_in_flight
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
        self._link.stop_by(time.monotonic() + self.config.shutdown_timeout)

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> ShipperStats:
        """Ship until :meth:`stop` (or, with ``exit_when_idle``, until nothing is due)."""
        if self._engine is None:
            self._engine = create_outbox_engine(self.config.database_url)
        # Served first: /readyz can say what the start-up waits for (a missing file).
        await self.metrics.start(self.engine)
        lease_keeper: asyncio.Task[None] | None = None
        try:
            if not await self._open_store() or not await self.lease.acquire():
                return self.stats
            lease_keeper = asyncio.create_task(self.lease.keep(self.stop), name="shipper-lease")
            while not self._stop.is_set():
                shipped = await self._step_with_backoff()
                if shipped is None:
                    break
                if shipped < self.config.batch_size:
                    done = shipped == 0 and self.config.exit_when_idle
                    if await self.tidier.step(force=done):
                        # Short pause between cleanup steps: writers get the lock in between.
                        await self._sleep(TIDY_PAUSE)
                        continue
                    if done:
                        break
                    # The next drain's read is the poll: it takes no write lock, so it can
                    # run every poll_interval without slowing writers.
                    await self._sleep(self.config.poll_interval)
        finally:
            if lease_keeper is not None:
                lease_keeper.cancel()
                await asyncio.gather(lease_keeper, return_exceptions=True)
            await self.metrics.stop()
            await self._shutdown()
        return self.stats

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
            async with asyncio.timeout(NOTE_TIMEOUT), self.engine.begin() as conn:
                if text:
                    await store.put_note(conn, name, text, now=time.time())
                else:
                    await store.clear_note(conn, name)
        except (SQLAlchemyError, TimeoutError) as exc:
            logger.debug("could not write the %s note: %s", name, exc)
            return False
        return True

    async def _step(self) -> int:
        if self._stop.is_set():
            return 0
        await self._link.ensure()
        await self._note_stream()
        try:
            return await self.drain()
        except SQLAlchemyError as exc:
            # Locked past busy_timeout, disk full on the delete: the rows are still there
            # and the acknowledged ones will come back as JetStream duplicates.
            raise TransientError(f"{DATABASE_TROUBLE}{exc}") from exc

    async def drain(self) -> int:
        """Ship batches until a read comes back short; return the rows claimed.

        A claim is a read with no write lock (:func:`outbox.store.due_rows`; it is also
        the idle poll) followed by one short write transaction that settles what the acks
        of the batch before said and records the new batch as in flight (checking the
        lease in the same statement). Each transaction runs whole in one worker thread
        (:attr:`db`), so it holds SQLite's write lock only while its statements run.
        While a full batch is in flight the next one is read, recorded and (when two
        batches fit in ``max_in_flight``) published too, so the loop costs the slower of
        the database work and the publishing, not their sum, and nats-server is never left
        waiting for a batch's last acks. Outcomes are written one step late, never before
        their PubAck, and all of them before ``drain`` returns.

        A suspect batch (a row in it has had an attempt that did not end in a PubAck,
        e.g. it was in flight when a shipper died) is published apart: what came before
        it is settled first and nothing after it is claimed until it is done. If it
        crashes this process too, the in-flight range then holds only its own rows, and
        only they are charged an attempt, not the innocent rows around them.
        """
        batch = await self._claim(after=0)
        if batch is None:
            await self._commit(span=None)
            return 0
        await self._commit(span=batch.span, buried=batch.buried)
        current: Flight | None = self._launch(batch)
        claimed = 0
        while current is not None:
            batch, flight = current
            claimed += batch.size
            ahead = Ahead()
            try:
                if batch.full and not batch.suspect and not self._stop.is_set():
                    ahead = await self._claim_ahead(batch)
                outcome = await flight
            except BaseException:
                await self._abandon(flight, ahead.flight)
                raise
            self._unsettled.absorb(outcome)
            if outcome.trouble is not None:
                await self._give_up(ahead)
                raise TransientError(outcome.trouble)
            current = ahead.flight or await self._launch_next(batch, ahead)
        await self._commit(span=None)
        return claimed

    async def _claim_ahead(self, batch: Batch) -> Ahead:
        """While ``batch`` waits for its acks: claim the next one and record both in
        flight; publish it too when both fit in the in-flight window. A suspect batch
        is only claimed: it waits until everything before it is settled."""
        following = await self._claim(after=batch.last_id)
        if following is None or following.suspect:
            return Ahead(following)
        await self._commit(span=(batch.first_id, following.last_id), buried=following.buried)
        if self._overlap:
            return Ahead(following, recorded=True, flight=self._launch(following))
        return Ahead(following, recorded=True)

    async def _launch_next(self, batch: Batch, ahead: Ahead) -> Flight | None:
        """``batch`` is done and nothing is in flight: publish the batch after it (claimed
        ahead, or claimed now), or None when none is due."""
        self._outcome_unknown = False
        following = ahead.batch
        if following is None and batch.full and not self._stop.is_set():
            following = await self._claim(after=batch.last_id)
        if following is None:
            return None
        if not ahead.recorded:
            await self._commit(span=following.span, buried=following.buried)
        return self._launch(following)

    async def _give_up(self, ahead: Ahead) -> None:
        """Connection-level trouble ended a batch: keep the outcome of the batch published
        after it (it meets the same trouble, or finishes), hand back one recorded and not
        published as it is, and write it all with nothing left in flight."""
        if ahead.flight is not None:
            self._unsettled.absorb(await ahead.flight[1])
        elif ahead.batch is not None and ahead.recorded:
            self._unsettled.release.extend(row.id for row in ahead.batch.rows)
        self._outcome_unknown = False
        await self._commit(span=None)

    def _launch(self, batch: Batch) -> Flight:
        """Start publishing ``batch`` (already recorded in flight)."""
        self._outcome_unknown = True
        return batch, asyncio.create_task(self._publish(batch))

    async def _abandon(self, flight: asyncio.Task[Settlement], upcoming: Flight | None) -> None:
        """An exception ends the drain: wait for the batches in flight (each bounded by
        the publish timeout) and keep what their acks said, to be written later. A batch
        whose publishing raised has no outcome: its rows stay recorded in flight."""
        known = True
        for task in (flight, upcoming[1] if upcoming is not None else None):
            if task is None:
                continue
            (result,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(result, Settlement):
                self._unsettled.absorb(result)
            else:
                known = False
        self._outcome_unknown = not known

    async def _claim(self, *, after: int) -> Batch | None:
        """Read the next due rows after ``after`` with no write lock, leaving out rows
        whose outcome is known but not yet written; None when nothing is due."""
        skip = {row_id for row_id in self._unsettled.written_ids() if row_id > after}
        limit = self.config.batch_size
        while True:
            rows = await self.db.read_inline(
                store.due_rows, now=time.time(), limit=limit + len(skip), after=after
            )
            if skip:
                rows = [row for row in rows if row.id not in skip]
            claim = store.plan_claim(rows, limit=limit, max_attempts=self.config.max_attempts)
            if claim.rows or not claim.buried:
                break
            # Only rows out of attempts: bury them now (what is in flight stays so), then
            # look again.
            await self._commit(span=self._span, buried=claim.buried)
        if not claim.rows:
            return None
        return self._prepare(claim.rows, full=claim.more, buried=claim.buried)

    async def _commit(
        self, *, span: tuple[int, int] | None, buried: list[store.OutboxRow] | None = None
    ) -> None:
        """One short write transaction: write the outcomes gathered in ``self._unsettled``,
        record ``span`` as the rows in flight (None: nothing is), extending the lease, and
        bury ``buried``. Raises :class:`LeaseLost` (after writing the outcomes, which hold
        whoever owns the lease) when another shipper took the lease. Writes nothing when
        there is nothing to write: an idle poll costs no write lock."""
        if not self._unsettled and span is None and self._span is None and not buried:
            self._record(self._unsettled)  # rows handed back with no write (released)
            self._unsettled = Settlement()
            return
        settlement, self._unsettled = self._unsettled, Settlement()
        try:
            while len(settlement.acked) > SETTLE_CHUNK:
                # Acknowledged rows beyond one chunk go first, a chunk per transaction,
                # so a writer waiting for the file waits for one short chunk at most.
                await self.db.write(self._write_acked, settlement.acked[:SETTLE_CHUNK])
                del settlement.acked[:SETTLE_CHUNK]
            held = await self.db.write(self._write_commit, settlement, span, buried or [])
        except BaseException:
            settlement.absorb(self._unsettled)
            self._unsettled = settlement  # still to be written
            raise
        if held or span is None:
            self._span = span
        self._record(settlement)
        if span is not None and not held:
            raise LeaseLost("another shipper took this outbox's lease")
        for row in buried or ():
            self.stats.dead += 1
            self.metrics.dead_lettered(1)
            logger.error(
                "row %s (event %s) dead after %d attempts",
                row.id,
                row.event_id,
                row.attempts,
                extra={"action": "dead_lettered", "event_id": row.event_id},
            )

    def _write_commit(
        self,
        conn: Connection,
        settlement: Settlement,
        span: tuple[int, int] | None,
        buried: list[store.OutboxRow],
    ) -> bool:
        """The body of :meth:`_commit`, run whole in one thread; True if the lease is held."""
        now = time.time()
        if settlement:
            self._write_acked(conn, settlement.acked, now=now)
            store.retry_later(conn, settlement.retry)
            store.mark_dead(conn, settlement.dead)
        held = store.set_in_flight(
            conn,
            name=LEASE_NAME,
            owner=self.owner,
            span=span,
            renew_until=now + self.config.lease_ttl if span is not None else None,
        )
        if held and buried:
            store.bury(conn, buried, max_attempts=self.config.max_attempts)
        return held

    def _write_acked(self, conn: Connection, ids: list[int], *, now: float | None = None) -> None:
        """Acknowledged rows: deleted, or kept as ``sent`` for ``keep_sent_hours``."""
        if self.config.keep_sent_hours > 0:
            store.mark_sent(conn, ids, now=time.time() if now is None else now)
        else:
            store.delete_sent(conn, ids)

    def _prepare(
        self, rows: list[store.OutboxRow], *, full: bool, buried: list[store.OutboxRow]
    ) -> Batch:
        max_payload, parse = self._link.publisher.max_payload, self.config.parse_payloads
        batch = Batch(rows=rows, full=full, buried=buried)
        for row in rows:
            prepared = to_message(row, max_payload=max_payload, parse_payload=parse)
            if isinstance(prepared, Refusal):
                batch.refused.append(store.Failure(row.id, prepared.reason))
            else:
                batch.messages.append(prepared)
                batch.sendable.append(row)
        return batch

    async def _publish(self, batch: Batch) -> Settlement:
        """Publish a batch and say what should become of each row. Never raises for
        connection trouble: it hands the rows back and reports the trouble."""
        publisher = self._link.publisher
        outcome = Settlement(dead=list(batch.refused))
        started = time.monotonic()
        try:
            results = (
                await publisher.publish(batch.messages, one_by_one=batch.suspect)
                if batch.messages
                else []
            )
        except TransientError as exc:
            self.metrics.publish_failed(batch)
            outcome.release.extend(row.id for row in batch.sendable)
            outcome.trouble = str(exc)
            return outcome
        now = time.time()
        self.metrics.published(batch, results, now=now, seconds=time.monotonic() - started)
        unreachable = 0
        why = ""
        for row, result in zip(batch.sendable, results, strict=True):
            if result.outcome is Outcome.STORED:
                self.stats.published += 1
                outcome.acked.append(row.id)
            elif result.outcome is Outcome.DUPLICATE:
                self.stats.duplicates += 1
                outcome.acked.append(row.id)
            elif result.outcome is Outcome.UNREACHABLE:
                unreachable += 1
                why = why or result.detail
                outcome.release.append(row.id)
            elif result.outcome is Outcome.REJECTED:
                outcome.dead.append(store.Failure(row.id, result.detail))
            else:
                at = retry_at(
                    row.attempts + 1,
                    now=now,
                    base=self.config.retry_base,
                    cap=self.config.retry_cap,
                )
                outcome.retry.append(store.Failure(row.id, result.detail, at))
        self.stats.batches += 1
        if unreachable:
            outcome.trouble = f"{unreachable} messages not stored, e.g. {why}"
            self._link.stream_unsure()
        return outcome

    def _record(self, settlement: Settlement) -> None:
        """Count and log a settlement once it is committed."""
        self.stats.retried += len(settlement.retry)
        self.stats.dead += len(settlement.dead)
        self.metrics.dead_lettered(len(settlement.dead))
        self.stats.released += len(settlement.release)
        for failure in settlement.dead:
            logger.error(
                "row %s dead: %s",
                failure.id,
                failure.reason,
                extra={"action": "dead_lettered", "row_id": failure.id},
            )
        if settlement.retry:
            self.stats.last_error = settlement.retry[-1].reason
            logger.warning(
                "%d rows will be retried later, e.g. %s",
                len(settlement.retry),
                settlement.retry[-1].reason,
                extra={"action": "rows_retry_later"},
            )

    # -- store, shutdown --------------------------------------------------------------

    async def _note_stream(self) -> None:
        """Tell ``usage-shipper status`` what can lose events on the stream, on change."""
        choice = self._link.stream
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
            self._db = Transactions(self.engine, checkpoint_every=CHECKPOINT_EVERY)
            self._lease = Lease(
                self.engine,
                owner=self.owner,
                ttl=self.config.lease_ttl,
                stop=self._stop,
                db=self._db,
            )
            self._tidier = Tidier(self.config, self.engine, self._db, self.stats)
        announced = False
        while True:
            try:
                if await migrate.prepare_engine(self.engine) == "host":
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
        await self._link.close()
        if self._db is not None:
            if not self._outcome_unknown:
                # Every row handed out has its outcome: write what is still held back (the
                # last short batch's acks), with nothing left in flight.
                with contextlib.suppress(SQLAlchemyError):
                    await self._commit(span=None)
            await self._db.close()
        if self._engine is not None:
            if self._lease is not None:
                with contextlib.suppress(SQLAlchemyError):
                    await self.lease.release()
            if self._own_engine:
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
