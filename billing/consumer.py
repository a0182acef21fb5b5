"""The billing consumer: JetStream in, one database transaction per batch, ack after commit.

The loop, top to bottom::

    run(stop):  start -> while not stop: step() in each lane (billing.lanes) -> close
    step():     take the batch fetched meanwhile (or fetch one) -> start fetching the next
                -> process(batch)
    process():  decode each (unless decoded while fetched) -> apply all in ONE transaction
                -> commit -> ack / term / nak

The transaction: on the consumer's own SQLite file, run whole in one worker thread
(:mod:`billing.sqlite_thread`); otherwise through the async engine (``run_sync``).

Exactly-once in effect: ``billing_records`` is unique on the de-duplication key and is
written in the same transaction as the debit and the wallet update, and the messages are
acknowledged only after that transaction commits. A crash before the commit loses nothing
(the server redelivers); a crash after the commit and before the acks makes the server
redeliver events that the inbox then recognises: acked, nothing changed.

Per message:

* billed / unpriced / duplicate -> ``ack``;
* not JSON or breaks the contract -> stored in ``rejected_events`` with the reason, in
  the same transaction, then ``term`` (AckTerm: never redelivered);
* the database refused the batch -> the batch is retried one message per transaction, so
  one bad message cannot hold back the others; a message that still fails is ``nak``-ed
  with a delay, and after ``max_deliveries`` deliveries parked in ``rejected_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import jetstream, migrate
from billing.apply import apply_batch
from billing.audit import audit
from billing.config import BillingConfig
from billing.connect import connect
from billing.engines import create_billing_engine
from billing.errors import BillingError
from billing.fallback import apply_or_fall_back
from billing.items import Item, Outcome, item_from_message
from billing.lanes import Step, run_lanes
from billing.metrics import ConsumerMetrics, metrics_for
from billing.puller import BatchPuller, ConsumerGone
from billing.reading import report
from billing.report import Audit, BillingReport
from billing.settle import FLUSH_TIMEOUT, JetStreamSettler, Settler
from billing.sqlite_thread import ThreadedTransactions
from billing.stats import ConsumerStats
from outbox.checkpoints import WalCheckpointer
from outbox.sqlite import sqlite_file
from usage_runtime.signals import sleep_unless_stopped

__all__ = ["BillingConsumer", "ConsumerStats"]

logger = logging.getLogger("billing.consumer")


@dataclass(slots=True)
class _Fetched:
    """A fetched batch and, when decoded already, its items (one per message)."""

    messages: list[Msg]
    items: list[Item] | None  # None: not decoded yet


class BillingConsumer:
    """A durable JetStream pull consumer that bills each usage event exactly once.

    Use ``await consumer.run(stop_event)`` for a service (it starts, consumes until the
    event is set, finishes and acknowledges the batch in hand, and closes), or
    ``await consumer.drain(idle_timeout)`` to consume until nothing arrives for
    ``idle_timeout`` seconds (tests, the demo), then ``await consumer.close()``
    (or use ``async with``).

    ``engine``: an async engine on the billing database to use instead of one made from
    ``config.database_url`` (the consumer then does not dispose of it). ``settler``:
    acknowledges each committed batch (default :class:`~billing.settle.JetStreamSettler`).
    """

    def __init__(
        self,
        config: BillingConfig,
        *,
        engine: AsyncEngine | None = None,
        settler: Settler | None = None,
    ) -> None:
        self.config = config.validate()
        self.stats = ConsumerStats()
        self._engine = engine
        self._owns_engine = engine is None
        #: Checkpoints SQLite's WAL off the commit path (own SQLite engine only).
        self.checkpointer: WalCheckpointer | None = None
        #: Runs each batch's transaction in one thread (own SQLite engine only).
        self._transactions: ThreadedTransactions | None = None
        self._settler: Settler = settler or JetStreamSettler()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._puller: BatchPuller | None = None
        #: When the stream was created: part of the key of events keyed by their delivery.
        self._stream_created = 0
        #: The next batch, fetched while the one in hand is applied (see :meth:`step`).
        self._prefetch: asyncio.Task[_Fetched] | None = None
        #: With several lanes (:mod:`billing.lanes`), one fetch at a time.
        self._fetch_lock = asyncio.Lock()
        #: Fetches that came back empty. In a drain, a lane that waited for its turn to
        #: fetch while another lane's fetch waited for nothing ends at once: each would
        #: otherwise wait the idle timeout again in turn (3 lanes: 3x as long to exit).
        self._empty_fetches = 0
        self._stop_when_drained = False
        self._closing = False
        self.stream: str | None = None
        #: ``new``, ``connecting``, ``waiting_for_stream``, ``consuming`` or ``closed``.
        self.state = "new"
        # Served on config.metrics_port; hooks that do nothing when it is unset.
        self.metrics: ConsumerMetrics = metrics_for(self.config)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            # Its own engine checkpoints SQLite's WAL off the commit path (outbox.checkpoints).
            self._engine = create_billing_engine(
                self.config.database_url, checkpoint_on_commit=False
            )
            path = sqlite_file(self._engine.url)
            if path is not None:
                self.checkpointer = WalCheckpointer(path, name="billing-wal-checkpointer")
                # And its batches' transactions each run whole in one thread (see there).
                self._transactions = ThreadedTransactions(self._engine.url)
        return self._engine

    @property
    def started(self) -> bool:
        return self._puller is not None

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Migrate (if configured), connect, and bind to the durable consumer.

        Without ``stop`` an unreachable NATS or a missing stream (with creation off)
        raises. With ``stop``, both are waited for, and setting ``stop`` meanwhile makes
        this return False (not started).
        """
        if self.started:
            return True
        self._closing = False
        # Serve /healthz at once, and /readyz (503 until consuming) while NATS is awaited.
        await self.metrics.start(self.engine)
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.config.migrate:
            await migrate.upgrade_engine(self.engine)
        self.state = "connecting"
        nc = await connect(
            self.config,
            stop,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        if nc is None:
            return False
        self._nc, self._js = nc, nc.jetstream()
        while True:
            try:
                await self._bind(nc, self._js)
                break
            except jetstream.StreamUnavailable as exc:
                if stop is None:
                    raise
                if self.state != "waiting_for_stream":
                    self.state = "waiting_for_stream"
                    logger.info("%s; waiting", exc, extra={"action": "stream_wait"})
                await sleep_unless_stopped(stop, 1.0)
                if stop.is_set():
                    return False
        self.state = "consuming"
        assert self.stream is not None, "bound to a stream"
        self.metrics.connected(nc, self.stream)
        logger.info(
            "consuming %s as %s",
            self.stream,
            self.config.durable,
            extra={"action": "consumer_started"},
        )
        return True

    async def close(self) -> None:
        """Close the connection (pending acks are flushed) and the engine if owned."""
        await self.metrics.stop()
        await self._release_unprocessed()
        puller, self._puller = self._puller, None
        if puller is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await puller.close()
        if self.state != "new":
            self.state = "closed"
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            self._closing = True
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await nc.close()
        transactions, self._transactions = self._transactions, None
        if transactions is not None:
            await transactions.close()
        if self._owns_engine and self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        checkpointer, self.checkpointer = self.checkpointer, None
        if checkpointer is not None:
            await checkpointer.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        counters = " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items())
        return (
            f"<BillingConsumer {self.state} stream={self.stream or self.config.stream} "
            f"durable={self.config.durable} {counters}>"
        )

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> ConsumerStats:
        """Consume until ``stop`` is set; the batch in hand is finished and acknowledged."""
        stop = stop or asyncio.Event()
        try:
            if not await self.start(stop):
                return self.stats
            await run_lanes(
                self._stepper,
                self.config.batches_in_flight,
                self.config.fetch_timeout,
                stop,
                until_idle=False,
            )
        finally:
            await self.close()
            logger.info("stopped: %s", self.stats.summary(), extra={"action": "consumer_stopped"})
        return self.stats

    async def drain(
        self,
        idle_timeout: float = 1.0,
        stop: asyncio.Event | None = None,
        *,
        progress: Callable[[], Awaitable[None]] | None = None,
        every: float = 2.0,
    ) -> ConsumerStats:
        """Consume until a fetch waits ``idle_timeout`` seconds for nothing, or ``stop`` is
        set; stays open.

        ``progress`` is awaited at most every ``every`` seconds while it works (the CLI
        prints how far it got). Returns the counters (since start, not only this call).
        Without ``stop``, bound the whole call with ``asyncio.timeout`` if the broker may
        never come back; with it, an unreachable broker is waited for until ``stop``.
        """
        if not await self.start(stop):
            return self.stats
        self._stop_when_drained = True
        try:
            await run_lanes(
                self._stepper,
                self.config.batches_in_flight,
                idle_timeout,
                stop,
                until_idle=True,
                progress=progress,
                every=every,
            )
        finally:
            self._stop_when_drained = False
        return self.stats

    @property
    def _stepper(self) -> Step:
        """What each lane runs (:mod:`billing.lanes`): one lane is :meth:`step`, which
        fetches the next batch while this one is applied; several take turns fetching."""
        return self.step if self.config.batches_in_flight == 1 else self._lane_step

    async def pending(self) -> int | None:
        """Messages in the stream not yet delivered to this durable (None: unknown now)."""
        if self._js is None or self.stream is None:
            return None
        try:
            info = await self._js.consumer_info(self.stream, self.config.durable, timeout=2)
        except (nats.errors.Error, TimeoutError):
            return None
        return int(info.num_pending)

    async def step(self, wait: float) -> int | None:
        """Fetch one batch (waiting up to ``wait`` s) and process it.

        While a batch is applied, the next one is already being fetched: the database's
        work (its own thread, or the PostgreSQL server) overlaps the network's, and the
        fetched batch is acknowledged only after its own commit, in the next step.

        Returns the number of messages handled, 0 when none came, None after a fetch error
        (the caller backs off).
        """
        puller = self._puller
        if puller is None:
            raise BillingError("the consumer is not started")
        batch = await self._guarded(self._next_batch(puller, wait))
        if batch is None:
            return None
        if not batch.messages:
            return 0
        self._prefetch = asyncio.create_task(self._fetch_decoded(puller, wait))
        await self.process(batch.messages, batch.items)
        return len(batch.messages)

    async def _lane_step(self, wait: float) -> int | None:
        """One lane's step when several run (:mod:`billing.lanes`): fetch (one lane at a
        time), then decode, apply and acknowledge while the next lane fetches."""
        puller = self._puller
        if puller is None:
            raise BillingError("the consumer is not started")
        empty_before = self._empty_fetches
        async with self._fetch_lock:
            if self._stop_when_drained and self._empty_fetches != empty_before:
                # Another lane's fetch waited for nothing while this one waited for its
                # turn. (A lane that was applying a batch meanwhile fetches again: its
                # acks may have let the server send more.)
                return 0
            batch = await self._guarded(self._fetch_only(puller, wait))
            if batch is not None and not batch.messages:
                self._empty_fetches += 1
        if batch is None:
            return None
        if not batch.messages:
            return 0
        await self.process(batch.messages)
        return len(batch.messages)

    async def _fetch_only(self, puller: BatchPuller, wait: float) -> _Fetched:
        return _Fetched(await puller.fetch(self.config.batch_size, wait), None)

    async def _guarded(self, fetch: Awaitable[_Fetched]) -> _Fetched | None:
        """The fetched batch; None after a fetch error (counted and logged; a deleted
        consumer is set up again)."""
        try:
            return await fetch
        except nats.errors.ConnectionClosedError:
            raise
        except ConsumerGone as exc:
            # The consumer or its stream was deleted: set them up again.
            self.stats.fetch_errors += 1
            logger.warning("fetch: %s; re-creating it", exc, extra={"action": "resubscribe"})
            await self._resubscribe()
            return None
        except nats.errors.Error as exc:
            self.stats.fetch_errors += 1
            logger.warning("fetch failed: %r", exc, extra={"action": "fetch_failed"})
            return None

    async def _next_batch(self, puller: BatchPuller, wait: float) -> _Fetched:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            return await task
        return await self._fetch_decoded(puller, wait)

    async def _fetch_decoded(self, puller: BatchPuller, wait: float) -> _Fetched:
        """Fetch a batch, and decode it unless the SQLite thread runs the transactions.

        As the prefetch, this runs while the batch before waits on its database work. On
        PostgreSQL that work is the server's, in another process: decoding meanwhile
        costs nothing (measured: +12% events/s). The SQLite thread's work is mostly Python
        (building the rows), which needs the interpreter lock the decoding holds: there
        decoding ahead only traded places with it and measured slower, so the batch is
        decoded when its turn comes.
        """
        messages = await puller.fetch(self.config.batch_size, wait)
        if self._transactions is not None:
            return _Fetched(messages, None)
        return _Fetched(messages, self._decode(messages))

    def _decode(self, messages: Sequence[Msg]) -> list[Item]:
        created = self._stream_created
        return [item_from_message(message, created) for message in messages]

    async def _release_unprocessed(self) -> None:
        """Closing: hand delivered-but-unprocessed messages back (``nak``) at once, so
        another process gets them now rather than after ``ack_wait``."""
        task, self._prefetch = self._prefetch, None
        held: list[Msg] = []
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                held.extend((await task).messages)
        if self._puller is not None:
            held.extend(self._puller.take_unprocessed())
        if not held or self._nc is None or self._nc.is_closed:
            return
        for message in held:
            with contextlib.suppress(nats.errors.Error):
                await message.nak()
        logger.info(
            "handed back %d fetched, unprocessed messages", len(held), extra={"action": "nak"}
        )

    async def process(
        self, messages: Sequence[Msg], items: Sequence[Item] | None = None
    ) -> list[Outcome]:
        """Decode (unless ``items`` are the messages decoded already), apply in one
        transaction, then acknowledge each message by its outcome."""
        if items is None:
            items = self._decode(messages)
        started = time.monotonic()
        outcomes = await self._apply(items)
        now = time.time()  # the commit: where an event's lag ends
        self.metrics.applied(items, outcomes, now=now, seconds=time.monotonic() - started)
        await self._settler.settle(
            self._nc, messages, outcomes, retry_delay=self.config.retry_delay
        )
        self.stats.count(outcomes)
        return outcomes

    # -- steps -----------------------------------------------------------------------------

    async def _apply(self, items: Sequence[Item]) -> list[Outcome]:
        return await apply_or_fall_back(
            self._apply_in_transaction, items, max_deliveries=self.config.max_deliveries
        )

    async def _apply_in_transaction(self, items: Sequence[Item]) -> list[Outcome]:
        engine = self.engine  # made first: it makes the SQLite thread too
        if self._transactions is not None:
            return await self._transactions.run(apply_batch, items)
        async with engine.begin() as conn:
            return await conn.run_sync(apply_batch, items)

    async def _bind(self, nc: NatsClient, js: JetStreamContext) -> None:
        """Ensure the stream and the durable consumer, and fetch from it from now on."""
        stream = await jetstream.bind(js, self.config)
        created = (await js.stream_info(stream)).created
        self._stream_created = int(created.timestamp()) if created is not None else 0
        if self._puller is not None and stream == self.stream:
            return
        puller = BatchPuller(nc, stream, self.config.durable)
        await puller.start()
        if self._puller is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._puller.close()
        self.stream, self._puller = stream, puller

    async def _resubscribe(self) -> None:
        if self._js is None or self._nc is None:
            return
        try:
            await self._bind(self._nc, self._js)
        except (nats.errors.Error, BillingError) as exc:
            logger.warning("re-subscribe failed: %r", exc, extra={"action": "resubscribe_failed"})

    # -- reading ---------------------------------------------------------------------------

    async def report(self) -> BillingReport:
        async with self.engine.connect() as conn:
            return await report(conn)

    async def audit(self) -> Audit:
        async with self.engine.connect() as conn:
            return await audit(conn)

    # -- connection events -----------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        logger.warning("nats: %r", exc, extra={"action": "nats_error"})

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("nats disconnected", extra={"action": "nats_disconnected"})

    async def _on_reconnected(self) -> None:
        logger.info("nats reconnected", extra={"action": "nats_reconnected"})
