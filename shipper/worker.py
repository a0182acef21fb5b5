"""The shipper: claim due rows, publish them to JetStream, settle what the acks say.

Read top to bottom: :meth:`Shipper.run` (start-up, the loop, shutdown), :meth:`_step`
(connect if needed, then :meth:`drain`), :meth:`drain` (claim, publish, settle, with the
database work of one batch overlapping the publishing of the one before).
Nothing is deleted from the outbox before its PubAck; every other outcome leaves the row
pending (released, or retried after its backoff) or moves it to ``dead`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import tenacity
from nats.aio.client import Client
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox import migrate, store
from outbox.sqlite import create_outbox_engine
from outbox.transactions import Transactions
from shipper.config import ShipperConfig, redact_url
from shipper.connection import CREDENTIAL_HINT, NatsRefused, connect
from shipper.discovery import Discovery
from shipper.errors import ConfigError, LeaseLost, TransientError
from shipper.metrics import ShipperMetrics, metrics_for
from shipper.publisher import Message, Outcome, Publisher
from shipper.rows import Refusal, to_message
from shipper.stream import ensure_stream

logger = logging.getLogger("shipper")

LEASE_NAME = "shipper"
#: Pause between two cleanup or vacuum steps, so writers take the lock in between.
TIDY_PAUSE = 0.02
#: Seconds between two looks for cleanup work while there is none.
TIDY_INTERVAL = 1.0


@dataclass
class ShipperStats:
    """Counters since start; ``repr`` shows them and tests assert on them."""

    published: int = 0  # new messages stored by JetStream
    duplicates: int = 0  # PubAcks with duplicate=true: delivered before
    retried: int = 0  # rows that failed alone and wait for their backoff
    dead: int = 0  # rows moved to dead by this process
    released: int = 0  # rows handed back because JetStream was unreachable
    batches: int = 0
    connections: int = 0
    cleaned: int = 0  # expired sent rows deleted
    vacuumed_pages: int = 0  # free pages given back to the file system
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def delivered(self) -> int:
        return self.published + self.duplicates


@dataclass
class Batch:
    """Claimed rows, split into messages to publish and rows refused before publishing."""

    rows: list[store.OutboxRow]
    full: bool
    buried: list[store.OutboxRow] = field(default_factory=list)  # out of attempts: to dead
    messages: list[Message] = field(default_factory=list)
    sendable: list[store.OutboxRow] = field(default_factory=list)
    refused: list[store.Failure] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def first_id(self) -> int:
        return self.rows[0].id

    @property
    def last_id(self) -> int:
        return self.rows[-1].id

    @property
    def span(self) -> tuple[int, int]:
        return self.first_id, self.last_id

    @property
    def suspect(self) -> bool:
        """A row here had an attempt that ended without a PubAck (see Shipper.drain)."""
        return any(row.attempts for row in self.rows)


@dataclass
class Settlement:
    """What to write about rows once their fate is known (see :mod:`outbox.store`)."""

    acked: list[int] = field(default_factory=list)
    retry: list[store.Failure] = field(default_factory=list)
    dead: list[store.Failure] = field(default_factory=list)
    release: list[int] = field(default_factory=list)  # handed back as they were: no write
    trouble: str | None = None  # connection-level trouble met while publishing

    def __bool__(self) -> bool:  # anything to write?
        return bool(self.acked or self.retry or self.dead)

    def written_ids(self) -> set[int]:
        """Rows whose outcome this settlement will write: not to be claimed again."""
        ids = set(self.acked)
        ids.update(failure.id for failure in self.retry)
        ids.update(failure.id for failure in self.dead)
        return ids

    def absorb(self, other: Settlement) -> None:
        self.acked.extend(other.acked)
        self.retry.extend(other.retry)
        self.dead.extend(other.dead)
        self.release.extend(other.release)


#: A batch being published and the task that publishes it.
Flight = tuple[Batch, "asyncio.Task[Settlement]"]


def retry_at(attempts: int, *, now: float, base: float, cap: float) -> float:
    """When a row that failed alone is due again: exponential in its attempts, with
    jitter so rows that failed together do not come back together."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return now + delay * random.uniform(0.5, 1.0)


class Shipper:
    def __init__(self, config: ShipperConfig, *, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self.stats = ShipperStats()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._engine = engine
        self._own_engine = engine is None
        self._discovery = Discovery(config)
        self._client: Client | None = None
        self._closed = asyncio.Event()
        self._publisher: Publisher | None = None
        self._stop = asyncio.Event()
        self._stop_deadline: float | None = None
        self._failing_since: float | None = None
        self._stream_ready = False  # ensure_stream succeeded on the current connection
        self._db: Transactions | None = None  # the claim/settle path (see _open_store)
        # Outcomes known and not yet written: the next transaction writes them (after an
        # error, the next drain's, or the shutdown's), and claims leave their rows out.
        self._unsettled = Settlement()
        # A batch was recorded in flight and its outcome is not known: if the run ends
        # now, its rows are charged an attempt (see _count_unsettled).
        self._outcome_unknown = False
        self._span: tuple[int, int] | None = None  # the in-flight range the lease records
        # Publish a batch while the one before waits for its acks only when both fit in
        # the in-flight window together.
        self._overlap = 2 * config.batch_size <= config.max_in_flight
        self._next_tidy = 0.0  # monotonic time of the next look for cleanup work
        self._auto_vacuum: bool | None = None  # the file can shrink (checked once)
        self._shrinking = False  # a vacuum pass is under way: go on until no page is free
        # Served on config.metrics_port; hooks that do nothing when it is unset.
        self.metrics: ShipperMetrics = metrics_for(config)

    def __repr__(self) -> str:
        return f"<Shipper {self.owner} {self.stats}>"

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "Shipper.run() opens the engine"
        return self._engine

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
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.config.shutdown_timeout
        self._stop.set()
        if self._publisher is not None:
            # Keep a little of the time for closing the connection.
            self._publisher.cut_short(self._stop_deadline - self._close_reserve)

    @property
    def _close_reserve(self) -> float:
        return min(1.0, self.config.shutdown_timeout / 4)

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> ShipperStats:
        """Ship until :meth:`stop` (or, with ``exit_when_idle``, until nothing is due)."""
        await self._open_store()
        lease_keeper: asyncio.Task[None] | None = None
        try:
            await self.metrics.start(self.engine)
            if not await self._wait_for_lease():
                return self.stats
            lease_keeper = asyncio.create_task(self._keep_lease(), name="shipper-lease")
            while not self._stop.is_set():
                shipped = await self._step_with_backoff()
                if shipped is None:
                    break
                if shipped < self.config.batch_size:
                    done = shipped == 0 and self.config.exit_when_idle
                    if await self._tidy(force=done):
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
            sleep=self._sleep,
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
        return shipped

    async def _step(self) -> int:
        if self._stop.is_set():
            return 0
        await self._ensure_connected()
        try:
            return await self.drain()
        except SQLAlchemyError as exc:
            # Locked past busy_timeout, disk full on the delete: the rows are still there
            # and the acknowledged ones will come back as JetStream duplicates.
            raise TransientError(f"outbox database: {exc}") from exc

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
            upcoming: Flight | None = None  # published while this batch's acks come in
            following: Batch | None = None  # published once this batch is done
            recorded = False  # following is recorded in flight already
            try:
                if batch.full and not batch.suspect and not self._stop.is_set():
                    following = await self._claim(after=batch.last_id)
                    if following is not None and not following.suspect:
                        await self._commit(
                            span=(batch.first_id, following.last_id), buried=following.buried
                        )
                        recorded = True
                        if self._overlap:
                            upcoming, following = self._launch(following), None
                outcome = await flight
            except BaseException:
                await self._abandon(flight, upcoming)
                raise
            self._unsettled.absorb(outcome)
            if outcome.trouble is not None:
                if upcoming is not None:
                    # It meets the same trouble, or finishes: either way, its outcome.
                    self._unsettled.absorb(await upcoming[1])
                elif following is not None and recorded:
                    # Recorded in flight, never published: handed back as it is.
                    self._unsettled.release.extend(row.id for row in following.rows)
                self._outcome_unknown = False
                await self._commit(span=None)
                raise TransientError(outcome.trouble)
            if upcoming is None:
                self._outcome_unknown = False
                if following is None and batch.full and not self._stop.is_set():
                    following = await self._claim(after=batch.last_id)
                if following is not None:
                    if not recorded:
                        await self._commit(span=following.span, buried=following.buried)
                    upcoming = self._launch(following)
            current = upcoming
        await self._commit(span=None)
        return claimed

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
            if self.config.keep_sent_hours > 0:
                store.mark_sent(conn, settlement.acked, now=now)
            else:
                store.delete_sent(conn, settlement.acked)
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

    def _prepare(
        self, rows: list[store.OutboxRow], *, full: bool, buried: list[store.OutboxRow]
    ) -> Batch:
        publisher = self._publisher
        assert publisher is not None
        batch = Batch(rows=rows, full=full, buried=buried)
        for row in rows:
            prepared = to_message(
                row, max_payload=publisher.max_payload, parse_payload=self.config.parse_payloads
            )
            if isinstance(prepared, Refusal):
                batch.refused.append(store.Failure(row.id, prepared.reason))
            else:
                batch.messages.append(prepared)
                batch.sendable.append(row)
        return batch

    async def _publish(self, batch: Batch) -> Settlement:
        """Publish a batch and say what should become of each row. Never raises for
        connection trouble: it hands the rows back and reports the trouble."""
        publisher = self._publisher
        assert publisher is not None
        outcome = Settlement(dead=list(batch.refused))
        started = time.monotonic()
        try:
            results = await publisher.publish(batch.messages) if batch.messages else []
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
            self._stream_ready = False
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

    # -- connection --------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._client is not None and not self._closed.is_set():
            if not self._stream_ready:
                # Rows found no stream responder: the stream may have been deleted under a
                # live connection. Check (and, if allowed, create) it again before claiming.
                try:
                    await ensure_stream(
                        self._client.jetstream(timeout=self.config.publish_timeout), self.config
                    )
                except ConfigError:
                    raise
                except Exception as exc:
                    raise TransientError(f"stream not available: {exc!r}") from exc
                self._stream_ready = True
            return
        await self._disconnect()
        servers = await self._discovery.servers()
        self._closed = asyncio.Event()
        try:
            client = await self._unless_stopped(connect(self.config, servers, self._closed))
        except NatsRefused as exc:
            if self.stats.connections == 0:
                # Never connected: wrong credentials or TLS settings, not an outage. Say so
                # and stop (exit 2) rather than retry for ever; the rows stay pending.
                raise ConfigError(
                    f"nats refused the connection: {exc} ({CREDENTIAL_HINT})"
                ) from exc
            raise  # worked before: maybe rotated credentials; keep trying
        except Exception as exc:
            shown = ", ".join(redact_url(server) for server in servers)
            raise TransientError(f"cannot connect to nats {shown}: {exc!r}") from exc
        self._client = client
        try:
            js = client.jetstream(timeout=self.config.publish_timeout)
            stream = await ensure_stream(js, self.config)
            publisher = Publisher(
                client,
                timeout=self.config.publish_timeout,
                max_in_flight=self.config.max_in_flight,
            )
            await publisher.start()
        except ConfigError:
            raise
        except Exception as exc:
            await self._disconnect()
            raise TransientError(f"jetstream not ready: {exc!r}") from exc
        self._publisher = publisher
        self._stream_ready = True
        self.stats.connections += 1
        self.metrics.connected(client, stream)
        logger.info("shipping to stream %s", stream, extra={"action": "ready", "stream": stream})

    async def _unless_stopped(self, connecting: Coroutine[Any, Any, Client]) -> Client:
        """Await ``connecting`` unless a stop comes first. nats-py's first connect retries
        each server ``max_reconnect_attempts`` times, ``reconnect_time_wait`` apart (for
        ever when that is negative), so a stop must not wait for it."""
        task = asyncio.create_task(connecting, name="shipper-connect")
        stopping = asyncio.create_task(self._stop.wait(), name="shipper-connect-stop")
        try:
            await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, stopping, return_exceptions=True)
        if task.cancelled():
            raise TransientError("stopped while connecting")
        return task.result()

    async def _disconnect(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        client, self._client = self._client, None
        # Closing on purpose: the connection's callbacks see this and stay quiet.
        self._closed.set()
        if client is not None and not client.is_closed:
            # Flush what is buffered, then close, each within the time left: not
            # client.drain(), which a timeout cannot cut short (cancelled, it still waits
            # up to 10 s for its own flush) and which gains nothing here, since every
            # PubAck worth waiting for has been waited for already.
            budget = self.config.shutdown_timeout
            if self._stop_deadline is not None:
                budget = max(self._close_reserve, self._stop_deadline - time.monotonic())
            with contextlib.suppress(Exception):
                await client.flush(timeout=budget)  # type: ignore[arg-type]
            if not client.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), self._close_reserve)

    # -- retention: sent rows, free pages, the WAL -------------------------------------

    async def _tidy(self, *, force: bool = False) -> bool:
        """One small step of cleanup when the outbox is idle or between short drains:
        delete up to ``cleanup_batch`` expired ``sent`` rows, else give back up to
        ``vacuum_pages`` free pages, each in its own short write transaction. After the
        file has shrunk, checkpoint the WAL so the -wal file shrinks too. Returns True
        when more work is left (the caller pauses briefly and comes back).

        Once a look finds nothing to do, the next waits ``TIDY_INTERVAL`` (unless
        ``force``): under a steady trickle a look after every poll would cost as much as
        the shipping itself."""
        if not force and time.monotonic() < self._next_tidy:
            return False
        try:
            more = await self._tidy_step()
        except SQLAlchemyError as exc:
            logger.warning("outbox cleanup: %s", exc, extra={"action": "cleanup_failed"})
            more = False
        if not more:
            self._next_tidy = time.monotonic() + TIDY_INTERVAL
        return more

    async def _tidy_step(self) -> bool:
        config = self.config
        if config.keep_sent_hours > 0:
            before = time.time() - config.keep_sent_hours * 3600.0
            deleted = await self.db.write(
                store.delete_sent_before, before=before, limit=config.cleanup_batch
            )
            if deleted:
                self.stats.cleaned += deleted
                return True
        if config.vacuum_pages <= 0:
            return False
        if self._auto_vacuum is None:
            async with self.engine.connect() as conn:
                self._auto_vacuum = await store.auto_vacuum_mode(conn) == 2
                await conn.rollback()
            if not self._auto_vacuum and self.engine.dialect.name == "sqlite":
                logger.info(
                    "the outbox file is not in auto_vacuum=INCREMENTAL mode; it will not "
                    "shrink (see docs/retention.md)",
                    extra={"action": "vacuum_unavailable"},
                )
        if not self._auto_vacuum:
            return False
        # Look first with a read (no write lock), and take the write lock only to give
        # pages back.
        free = await self.db.read(store.freelist_pages)
        threshold = config.vacuum_min_free_pages if not self._shrinking else 0
        if free > threshold:
            await self.db.write(store.incremental_vacuum, config.vacuum_pages)
            self.stats.vacuumed_pages += min(free, config.vacuum_pages)
        if free > threshold:
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
            passive = await store.checkpoint(conn, "PASSIVE")
            if passive is not None and passive[0] == 0 and passive[1] == passive[2]:
                await store.checkpoint(conn, "TRUNCATE")

    # -- lease, store, shutdown --------------------------------------------------------

    async def _open_store(self) -> None:
        if self._engine is None:
            self._engine = create_outbox_engine(self.config.database_url)
        if self._db is None:
            self._db = Transactions(self._engine)
        announced = False
        while True:
            try:
                await migrate.upgrade_engine(self._engine)
                return
            except SQLAlchemyError as exc:
                # A full disk or a lock held past busy_timeout is a state to wait out, as
                # the running loop does; exiting would only make a supervisor restart us
                # into the same wall. Configuration errors were caught by validate().
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

    async def _wait_for_lease(self) -> bool:
        announced = False
        while not self._stop.is_set():
            counted: int | None = None
            try:
                async with self.engine.begin() as conn:
                    now = time.time()
                    if await store.take_lease(
                        conn, name=LEASE_NAME, owner=self.owner, now=now, ttl=self.config.lease_ttl
                    ):
                        counted = await store.recover_in_flight(conn, name=LEASE_NAME)
                    else:
                        holder = await store.lease_holder(conn, name=LEASE_NAME)
            except SQLAlchemyError as exc:
                # Disk full, locked past busy_timeout: wait and try again, as the running
                # loop does, instead of exiting (a supervisor would restart us into it).
                logger.warning(
                    "cannot take the outbox lease: %s; retrying",
                    exc,
                    extra={"action": "lease_take_failed"},
                )
                await self._sleep(self.config.lease_ttl / 3)
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
            await self._sleep(self.config.lease_ttl / 3)
        return False

    async def _keep_lease(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self.config.lease_ttl / 3)
            try:
                async with self.engine.begin() as conn:
                    held = await store.take_lease(
                        conn,
                        name=LEASE_NAME,
                        owner=self.owner,
                        now=time.time(),
                        ttl=self.config.lease_ttl,
                    )
            except SQLAlchemyError as exc:
                logger.warning(
                    "could not renew the lease: %s", exc, extra={"action": "lease_renew_failed"}
                )
                continue
            if not held:
                logger.error(
                    "lost the outbox lease to another shipper; stopping",
                    extra={"action": "lease_lost"},
                )
                self.stop()

    async def _shutdown(self) -> None:
        await self._disconnect()
        if self._db is not None:
            if not self._outcome_unknown:
                # Every row handed out has its outcome: write what is still held back (the
                # last short batch's acks), with nothing left in flight.
                with contextlib.suppress(SQLAlchemyError):
                    await self._commit(span=None)
            await self._db.close()
        if self._engine is not None:
            with contextlib.suppress(SQLAlchemyError):
                async with self._engine.begin() as conn:
                    await self._count_unsettled(conn)
                    await store.drop_lease(conn, name=LEASE_NAME, owner=self.owner)
            if self._own_engine:
                await self._engine.dispose()
        logger.info("stopped: %s", self.stats, extra={"action": "stopped"})

    async def _count_unsettled(self, conn: AsyncConnection) -> None:
        """Count an attempt on rows still recorded in flight as the run ends: a clean stop
        settles everything first, so they are there only when the run ends on an
        exception. Dropping the lease would drop that evidence, and a row that crashes
        the process would be retried for ever instead of reaching ``max_attempts``."""
        holder = await store.lease_holder(conn, name=LEASE_NAME)
        if holder is None or holder[0] != self.owner:
            return  # not ours (any more): its holder counts
        counted = await store.recover_in_flight(conn, name=LEASE_NAME)
        if counted:
            logger.warning(
                "stopping with %d rows in flight; counted an attempt on each",
                counted,
                extra={"action": "in_flight_recovered"},
            )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is asked for."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _log_backoff(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self.stats.last_error = str(error)
        if self._failing_since is None:
            self._failing_since = time.time()
            logger.warning(
                "backing off: %s",
                error,
                extra={"action": "backoff_started"},
            )
        else:
            logger.debug("still backing off (attempt %d): %s", state.attempt_number, error)
