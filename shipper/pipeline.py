"""The drain as explicit state: at most two claimed batches, the range recorded in flight
with the lease, and the outcomes known but not yet written.

One :meth:`Pipeline.drain` ships batches until a read comes back short:

* **claim**: a read with no write lock (:func:`outbox.store.due_rows`; it is also the
  idle poll), planned by :func:`outbox.store.plan_claim` (suspect batches shrink, rows out
  of attempts are buried), leaving out rows whose outcome is known but not yet written;
* **record**: one short write transaction that writes what the acks before said (all but
  the acknowledged rows beyond one chunk) and records the new range in flight, checking
  the lease in the same statement (:class:`LeaseLost` when another shipper took it);
* **publish**: a task per batch (:class:`Leg`), through the injected link's publisher;
* **settle**: acknowledged rows beyond the first chunk are deleted in chunks of
  :data:`SETTLE_CHUNK`, one short transaction each, *after* the next batch went out, so
  the deletes of batch N overlap the publishing of batch N+1.

The record and settle transactions run on the event loop's thread when no writer waits
(:meth:`outbox.transactions.Transactions.write_inline`): in a worker thread every return
from SQLite waited for the interpreter lock while the loop claimed or published, holding
the write lock all that while, and the loop waited for each answer. Inline, the lock is
held for SQLite's own work: settling a 1,000-row batch took 3.3-3.9 ms instead of 9.9.

While a full batch is in flight the next one is claimed, recorded and (when both fit in
``max_in_flight``) published too, so the loop costs the slower of the database work and
the publishing, not their sum. A suspect batch (a row in it had an attempt that ended
without a PubAck, e.g. it was in flight when a shipper died) is published apart: what
came before it is settled first and nothing after it is claimed until it is done. If it
crashes this process too, the range in flight holds only its rows, and only they are
charged an attempt (:meth:`shipper.lease.Lease.release`).

The rules that keep the crash audit exact: nothing is deleted before its PubAck; a row
stays inside the recorded range from the transaction that records it until its outcome
is written or it is known acknowledged (an acknowledged row outside the range, not yet
deleted, is re-sent after a crash and JetStream drops it as a duplicate, charging it no
attempt); every outcome is written before :meth:`drain` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from outbox import store
from outbox.transactions import Transactions
from shipper.batch import Batch, Settlement, prepare, settle
from shipper.config import ShipperConfig
from shipper.errors import LeaseLost, TransientError
from shipper.lease import LEASE_LOST, LEASE_NAME
from shipper.link import Link
from shipper.metrics import ShipperMetrics
from shipper.stats import ShipperStats

logger = logging.getLogger("shipper")

#: Acknowledged rows settled per write transaction at most. The transactions run on the
#: event loop's thread (:meth:`outbox.transactions.Transactions.write_inline`), so the
#: lock is held for SQLite's own work: 250 rows 0.6 ms p50, 2 ms p99. Measured with
#: ``bench.retention --events 300000`` on the 2-core box: chunks of 100 / 250 / 500
#: drained in 6.4 / 4.7-5.3 / 5.9-6.5 s with writer p99 3.9 / 2.6-4.0 / 4.1-4.9 ms.
SETTLE_CHUNK = 250


@dataclass
class Leg:
    """One claimed batch on its way through the pipeline."""

    batch: Batch
    recorded: bool = False  # its range is recorded in flight with the lease
    task: asyncio.Task[Settlement] | None = None  # publishing it (None: not sent yet)
    known: bool = False  # its outcome is in the pipeline's unsettled outcomes

    @property
    def unknown(self) -> bool:
        """Sent, and what became of it is not known (still under way, or it raised)."""
        return self.task is not None and not self.known


class Pipeline:
    def __init__(
        self,
        config: ShipperConfig,
        *,
        db: Transactions,
        link: Link,
        owner: str,
        stats: ShipperStats,
        metrics: ShipperMetrics,
        stopping: Callable[[], bool],
    ) -> None:
        self.config = config
        self.db = db
        self.link = link
        self.owner = owner
        self.stats = stats
        self.metrics = metrics
        self._stopping = stopping
        #: Outcomes known and not yet written: the next transaction writes them, and
        #: claims leave their rows out.
        self.unsettled = Settlement()
        #: The range recorded in flight with the lease (None: nothing is).
        self.span: tuple[int, int] | None = None
        #: The batch whose acks are awaited, and the one claimed after it meanwhile.
        self.current: Leg | None = None
        self.ahead: Leg | None = None
        # Publish a batch while the one before waits for its acks only when both fit in
        # the in-flight window together.
        self._overlap = 2 * config.batch_size <= config.max_in_flight

    @property
    def outcome_unknown(self) -> bool:
        """A batch was sent and its outcome is not known: its rows stay recorded in
        flight, so a run ending now charges them an attempt."""
        return any(leg is not None and leg.unknown for leg in (self.current, self.ahead))

    # -- the drain ---------------------------------------------------------------------

    async def drain(self) -> int:
        """Ship batches until a read comes back short; return the rows claimed."""
        self.current = self.ahead = None
        batch = await self._claim(after=0)
        if batch is None:
            await self._commit(span=None)  # writes nothing unless something is held
            return 0
        self.current = Leg(batch)
        await self._record(self.current, span=batch.span)
        await self._launch(self.current)
        claimed = 0
        while self.current is not None:
            leg = self.current
            assert leg.task is not None
            claimed += leg.batch.size
            try:
                if leg.batch.full and not leg.batch.suspect and not self._stopping():
                    await self._claim_ahead(leg)
                outcome = await leg.task
            except BaseException:
                await self._abandon()
                raise
            self._absorb(leg, outcome)
            if outcome.trouble is not None:
                await self._give_up()
                raise TransientError(outcome.trouble)
            await self._advance(leg)
        await self.settle_all()
        return claimed

    async def settle_all(self) -> None:
        """Write every outcome held, with nothing left in flight; when a batch's outcome
        is unknown, write the rest and keep the range recorded (it is charged)."""
        await self._commit(span=self.span if self.outcome_unknown else None)
        await self._settle_acked()

    async def _claim_ahead(self, leg: Leg) -> None:
        """While ``leg`` waits for its acks: claim the next batch and record both in
        flight; publish it too when both fit in the in-flight window; then delete the
        acknowledged rows of the batch before. A suspect batch is only claimed: it waits
        until everything before it is settled."""
        batch = await self._claim(after=leg.batch.last_id)
        if batch is None:
            return
        self.ahead = Leg(batch)
        if batch.suspect:
            return
        await self._record(self.ahead, span=(leg.batch.first_id, batch.last_id))
        if self._overlap:
            await self._launch(self.ahead)
        await self._settle_acked()

    async def _advance(self, done: Leg) -> None:
        """``done`` is settled and nothing is in flight but the batch claimed ahead:
        make that (or, when none was, the batch claimed now) the current one, recorded
        and sent; no current batch when none is due."""
        following, self.ahead = self.ahead, None
        if following is None and done.batch.full and not self._stopping():
            batch = await self._claim(after=done.batch.last_id)
            following = Leg(batch) if batch is not None else None
        self.current = following
        if following is None:
            return
        if not following.recorded:
            await self._record(following, span=following.batch.span)
        if following.task is None:
            await self._launch(following)
            await self._settle_acked()

    async def _give_up(self) -> None:
        """Connection-level trouble ended a batch: keep the outcome of the batch sent
        after it (it meets the same trouble, or finishes), hand back one recorded and not
        sent as it is, and write it all with nothing left in flight."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            if ahead.task is not None:
                self._absorb(ahead, await ahead.task)
            elif ahead.recorded:
                self.unsettled.release.extend(row.id for row in ahead.batch.rows)
        await self._commit(span=None)
        await self._settle_acked()

    async def _abandon(self) -> None:
        """An exception ends the drain: wait for the batches sent (each bounded by the
        publish timeout) and keep what their acks said, to be written later. A batch
        whose publishing raised stays unknown: its rows stay recorded in flight."""
        for leg in (self.current, self.ahead):
            if leg is None or not leg.unknown:
                continue
            assert leg.task is not None
            (result,) = await asyncio.gather(leg.task, return_exceptions=True)
            if isinstance(result, Settlement):
                self._absorb(leg, result)

    async def _launch(self, leg: Leg) -> None:
        """Start publishing ``leg`` (already recorded in flight), and let it run until its
        frames are on the socket: the claims and settles that follow run on this thread
        without yielding, and the server should be storing the batch meanwhile."""
        leg.task = asyncio.create_task(self._publish(leg.batch))
        await asyncio.sleep(0)  # the task builds its frames and hands them to nats-py
        await asyncio.sleep(0)  # nats-py's flusher writes them

    def _absorb(self, leg: Leg, outcome: Settlement) -> None:
        self.unsettled.absorb(outcome)
        leg.known = True

    # -- claim -------------------------------------------------------------------------

    async def _claim(self, *, after: int) -> Batch | None:
        """Read the next due rows after ``after`` with no write lock, leaving out rows
        whose outcome is known but not yet written; None when nothing is due."""
        skip = {row_id for row_id in self.unsettled.written_ids() if row_id > after}
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
            await self._commit(span=self.span, buried=claim.buried)
        if not claim.rows:
            return None
        return prepare(
            claim.rows,
            full=claim.more,
            buried=claim.buried,
            max_payload=self.link.publisher.max_payload,
            parse_payloads=self.config.parse_payloads,
        )

    # -- publish -----------------------------------------------------------------------

    async def _publish(self, batch: Batch) -> Settlement:
        """Publish a batch and say what should become of each row. Never raises for
        connection trouble: it hands the rows back and reports the trouble."""
        started = time.monotonic()
        try:
            results = (
                await self.link.publisher.publish(batch.messages, one_by_one=batch.suspect)
                if batch.messages
                else []
            )
        except TransientError as exc:
            self.metrics.publish_failed(batch)
            return Settlement(
                dead=list(batch.refused),
                release=[row.id for row in batch.sendable],
                trouble=str(exc),
            )
        now = time.time()
        self.metrics.published(batch, results, now=now, seconds=time.monotonic() - started)
        outcome, tally = settle(
            batch,
            results,
            now=now,
            retry_base=self.config.retry_base,
            retry_cap=self.config.retry_cap,
        )
        self.stats.published += tally.stored
        self.stats.duplicates += tally.duplicates
        self.stats.batches += 1
        if tally.unreachable:
            self.link.stream_unsure()
        return outcome

    # -- record and settle -------------------------------------------------------------

    async def _record(self, leg: Leg, *, span: tuple[int, int]) -> None:
        await self._commit(span=span, buried=leg.batch.buried)
        leg.recorded = True

    async def _commit(
        self, *, span: tuple[int, int] | None, buried: list[store.OutboxRow] | None = None
    ) -> None:
        """One short write transaction: write the outcomes held (acknowledged rows up to
        one chunk; :meth:`_settle_acked` writes the rest), record ``span`` as the rows in
        flight (None: nothing is), extending the lease, and bury ``buried``. Raises
        :class:`LeaseLost` (after writing the outcomes, which hold whoever owns the
        lease) when another shipper took the lease. Writes nothing when there is nothing
        to write: an idle poll costs no write lock."""
        if not self.unsettled and span is None and self.span is None and not buried:
            self._count(self.unsettled)  # rows handed back with no write (released)
            self.unsettled = Settlement()
            return
        held_back, self.unsettled = self.unsettled, Settlement()
        now_written = Settlement(
            acked=held_back.acked[:SETTLE_CHUNK],
            retry=held_back.retry,
            dead=held_back.dead,
            release=held_back.release,
        )
        try:
            held = await self.db.write_inline(self._write_commit, now_written, span, buried or [])
        except BaseException:
            held_back.absorb(self.unsettled)
            self.unsettled = held_back  # still to be written
            raise
        rest = Settlement(acked=held_back.acked[SETTLE_CHUNK:])
        rest.absorb(self.unsettled)
        self.unsettled = rest
        if held or span is None:
            self.span = span
        self._count(now_written)
        if span is not None and not held:
            raise LeaseLost(LEASE_LOST)
        if not held:
            return
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

    async def _settle_acked(self) -> None:
        """Delete (or keep as sent) the acknowledged rows held, a chunk per transaction,
        so a writer waiting for the file waits for one short chunk at most."""
        while self.unsettled.acked:
            chunk = self.unsettled.acked[:SETTLE_CHUNK]
            await self.db.write_inline(self._write_acked, chunk)
            del self.unsettled.acked[: len(chunk)]

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
        if not ids:
            return
        if self.config.keep_sent_hours > 0:
            store.mark_sent(conn, ids, now=time.time() if now is None else now)
        else:
            store.delete_sent(conn, ids)

    def _count(self, settlement: Settlement) -> None:
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
