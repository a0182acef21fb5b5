"""Prometheus metrics for the shipper, served with ``/healthz`` and ``/readyz``.

The :class:`~shipper.worker.Shipper` calls a few hooks: once per published batch
(outcomes, errors, latency, end-to-end lag), on each new NATS connection and on rows
moved to ``dead``. With ``metrics_port`` unset it gets :class:`ShipperMetrics`, whose
hooks do nothing. With a port it gets :class:`PrometheusShipperMetrics`, which owns a
registry of its own (never the global one: tests run several shippers in one process)
and a :class:`~usage_runtime.health.HealthServer` on that port.

The outbox numbers (pending, oldest pending age, dead) are read from the database when
``/metrics`` or ``/readyz`` is asked for, at most once per :data:`BACKLOG_MAX_AGE`
seconds whoever asks, through an engine that never takes SQLite's write lock
(:func:`outbox.probes.reader_engine`), off the event loop (aiosqlite's thread).

Metric names (all prefixed ``usage_shipper_``)::

    outbox_pending                      gauge    rows waiting (due now or after a backoff)
    outbox_oldest_pending_age_seconds   gauge    age of the oldest pending row; 0 when none
    outbox_dead                         gauge    rows parked in dead
    outbox_read_errors_total            counter  failed reads of the three above
    events_published_total{outcome}     counter  new | duplicate (JetStream had it already)
    publish_errors_total{kind}          counter  messages: unreachable | retry | rejected |
                                                 refused (before publishing) | connection
    batch_publish_seconds               histogram publish of one batch until its last PubAck
    lag_seconds                         histogram event created_at to its PubAck
    dead_lettered_total                 counter  rows this process moved to dead
    nats_connections_total              counter  NATS connections this process set up
    nats_reconnects_total               counter  reconnects nats-py made within them
    publish_mode{mode}                  gauge    1 for the mode in use: fast_ingest (batches,
                                                 nats-server 2.14+ and allow_batched) or
                                                 per_message (one PubAck per message)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import store
from outbox.probes import reader_engine
from shipper.config import ShipperConfig
from shipper.publisher import Outcome, Result
from usage_runtime.health import HealthServer, nats_problem
from usage_runtime.histograms import LAG_BUCKETS, LATENCY_BUCKETS, BatchHistogram

logger = logging.getLogger("shipper.metrics")

#: Scrapes and probes within this many seconds of the last outbox read reuse it.
BACKLOG_MAX_AGE = 1.0

_ERROR_KINDS = {
    Outcome.UNREACHABLE: "unreachable",
    Outcome.RETRY: "retry",
    Outcome.REJECTED: "rejected",
}


class PublishedBatch(Protocol):
    """What the hooks read of a :class:`shipper.batch.Batch`."""

    @property
    def sendable(self) -> list[store.OutboxRow]: ...

    @property
    def refused(self) -> list[store.Failure]: ...


class ShipperMetrics:
    """The hooks the shipper calls; this base does nothing (metrics off)."""

    server: HealthServer | None = None

    async def start(self, engine: AsyncEngine) -> None:
        """The shipper opened ``engine``: serve from now on."""

    async def stop(self) -> None:
        """The shipper is stopping: stop serving."""

    def connected(self, client: Client, stream: str) -> None:
        """A new NATS connection, bound to ``stream``, is ready to publish."""

    def stream_risks(self, risks: Sequence[str]) -> None:
        """The stream was (re)checked: ``risks`` name what can lose events (none: empty)."""

    def published(
        self, batch: PublishedBatch, results: Sequence[Result], *, now: float, seconds: float
    ) -> None:
        """``batch`` was published: ``results`` match ``batch.sendable``; ``now`` is when
        the PubAcks were in, ``seconds`` how long the batch took."""

    def publish_failed(self, batch: PublishedBatch) -> None:
        """The connection could not take ``batch``: its messages were handed back."""

    def dead_lettered(self, count: int) -> None:
        """``count`` rows were moved to dead (the transaction committed)."""

    def problem(self, text: str | None, since: float | None) -> None:
        """The shipper backs off from ``text`` (since ``since``, Unix s); None: it ships."""

    def publish_mode(self, mode: str) -> None:
        """The connection publishes in ``mode``: ``fast_ingest`` or ``per_message``."""


class PrometheusShipperMetrics(ShipperMetrics):
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_published = Counter(
            "usage_shipper_events_published",
            "Events JetStream acknowledged, by outcome: new (stored) or duplicate "
            "(it already had this Nats-Msg-Id)",
            ["outcome"],
            registry=r,
        )
        self.publish_errors = Counter(
            "usage_shipper_publish_errors",
            "Messages not acknowledged, by kind: unreachable (no stream answered), retry "
            "(timeout or retriable error), rejected (the stream refused it), refused (the "
            "row was unsendable, never published), connection (handed back unpublished)",
            ["kind"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "usage_shipper_batch_publish_seconds",
            "Time from publishing a batch's first message to its last PubAck",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = BatchHistogram(
            "usage_shipper_lag_seconds",
            "Time from an event's created_at to its PubAck (the batch's end), seconds",
            LAG_BUCKETS,
            r,
        )
        self.dead = Counter(
            "usage_shipper_dead_lettered", "Rows this process moved to dead", registry=r
        )
        self.connections = Counter(
            "usage_shipper_nats_connections", "NATS connections this process set up", registry=r
        )
        self.read_errors = Counter(
            "usage_shipper_outbox_read_errors",
            "Failed reads of the outbox counts (the gauges keep their last values)",
            registry=r,
        )
        self.stream_risk = Gauge(
            "usage_shipper_stream_discard_risk",
            "1 for each way the stream in use can lose usage events: a limit that discards "
            "unread messages (max_msgs, max_bytes, max_msgs_per_subject, max_age), or "
            "subjects that do not capture multi-token usage subjects",
            ["limit"],
            registry=r,
        )
        self.mode = Gauge(
            "usage_shipper_publish_mode",
            "1 for the publish mode in use: fast_ingest (batches with one flow ack per "
            "many messages) or per_message (one PubAck per message)",
            ["mode"],
            registry=r,
        )
        for outcome in ("new", "duplicate"):
            self.events_published.labels(outcome)
        for kind in ("unreachable", "retry", "rejected", "refused", "connection"):
            self.publish_errors.labels(kind)
        r.register(self)  # collect() below: the values read at scrape time
        self.server = HealthServer(
            r, host=host, port=port, ready=self.readiness, refresh=self.refresh
        )
        self._engine: AsyncEngine | None = None
        self._owns_engine = False
        self._backlog: store.Backlog | None = None
        self._backlog_read_at = -BACKLOG_MAX_AGE
        self._backlog_problem: str | None = "database not read yet"
        self._backlog_lock = asyncio.Lock()
        self._client: Client | None = None
        self._stream: str | None = None
        self._past_reconnects = 0  # reconnects of connections already replaced
        self._problem: tuple[str, float] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, engine: AsyncEngine) -> None:
        assert self.server is not None
        await self.server.start()  # first: a port in use must leave nothing to clean up
        self._engine = reader_engine(engine)
        self._owns_engine = self._engine is not engine

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.close()
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
        self._engine = None

    # -- hooks -----------------------------------------------------------------------------

    def connected(self, client: Client, stream: str) -> None:
        if self._client is not None and self._client is not client:
            self._past_reconnects += self._client.stats["reconnects"]
        self._client, self._stream = client, stream
        self.connections.inc()

    def stream_risks(self, risks: Sequence[str]) -> None:
        self.stream_risk.clear()
        for risk in risks:
            self.stream_risk.labels(risk).set(1)

    def published(
        self, batch: PublishedBatch, results: Sequence[Result], *, now: float, seconds: float
    ) -> None:
        if results:
            self.batch_seconds.observe(seconds)
        if batch.refused:
            self.publish_errors.labels("refused").inc(len(batch.refused))
        lags: list[float] = []
        new = duplicate = 0
        failed: dict[str, int] = {}
        stored, dup = Outcome.STORED, Outcome.DUPLICATE
        for row, result in zip(batch.sendable, results, strict=True):
            outcome = result.outcome
            if outcome is stored:
                new += 1
                lags.append(now - row.created_at)
            elif outcome is dup:
                duplicate += 1
                lags.append(now - row.created_at)
            else:
                kind = _ERROR_KINDS[outcome]
                failed[kind] = failed.get(kind, 0) + 1
        if new:
            self.events_published.labels("new").inc(new)
        if duplicate:
            self.events_published.labels("duplicate").inc(duplicate)
        for kind, count in failed.items():
            self.publish_errors.labels(kind).inc(count)
        self.lag.observe_many(lags)

    def publish_failed(self, batch: PublishedBatch) -> None:
        if batch.sendable:
            self.publish_errors.labels("connection").inc(len(batch.sendable))
        if batch.refused:
            self.publish_errors.labels("refused").inc(len(batch.refused))

    def dead_lettered(self, count: int) -> None:
        if count:
            self.dead.inc(count)

    def publish_mode(self, mode: str) -> None:
        for each in ("fast_ingest", "per_message"):
            self.mode.labels(each).set(1 if each == mode else 0)

    # -- read at scrape time ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the outbox counts unless a read is under :data:`BACKLOG_MAX_AGE` old;
        concurrent callers share one read."""
        if time.monotonic() - self._backlog_read_at < BACKLOG_MAX_AGE:
            return
        async with self._backlog_lock:
            if time.monotonic() - self._backlog_read_at < BACKLOG_MAX_AGE:
                return  # read while we waited for the lock
            problem = await self._read_backlog()
            if problem != self._backlog_problem and problem is not None:
                logger.warning(
                    "cannot read the outbox counts: %s",
                    problem,
                    extra={"action": "metrics_read_failed"},
                )
            self._backlog_problem = problem
            # Failed reads wait too: a struggling database is not asked every scrape.
            self._backlog_read_at = time.monotonic()

    async def _read_backlog(self) -> str | None:
        if self._engine is None:
            return "database not open"
        try:
            async with self._engine.connect() as conn:
                self._backlog = await store.backlog(conn)
        except (SQLAlchemyError, OSError) as exc:
            self.read_errors.inc()
            return f"database did not answer ({type(exc).__name__})"
        return None

    def problem(self, text: str | None, since: float | None) -> None:
        if text is None or since is None:
            self._problem = None
        elif self._problem is None or self._problem[0] != text:
            self._problem = (text, since)

    async def readiness(self) -> str | None:
        if self._problem is not None:
            # What the shipper is waiting out says more than "not connected to NATS".
            text, since = self._problem
            return f"{text} (since {time.strftime('%H:%M:%S', time.localtime(since))})"
        problem = await nats_problem(self._client, self._stream)
        if problem is not None:
            return problem
        await self.refresh()
        return self._backlog_problem

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("usage_shipper_outbox_pending", "")
        yield GaugeMetricFamily("usage_shipper_outbox_oldest_pending_age_seconds", "")
        yield GaugeMetricFamily("usage_shipper_outbox_dead", "")
        yield CounterMetricFamily("usage_shipper_nats_reconnects", "")

    def collect(self) -> Iterator[Metric]:
        backlog = self._backlog
        if backlog is not None:  # absent until read once, so absent() alerts can tell
            yield GaugeMetricFamily(
                "usage_shipper_outbox_pending",
                "Outbox rows pending: due now or waiting for a retry",
                value=backlog.pending,
            )
            oldest = backlog.oldest_pending_at
            yield GaugeMetricFamily(
                "usage_shipper_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox row (0 when none is pending)",
                value=0.0 if oldest is None else max(0.0, time.time() - oldest),
            )
            yield GaugeMetricFamily(
                "usage_shipper_outbox_dead", "Outbox rows parked in dead", value=backlog.dead
            )
        current = self._client.stats["reconnects"] if self._client is not None else 0
        yield CounterMetricFamily(
            "usage_shipper_nats_reconnects",
            "Reconnects nats-py made after a connection dropped",
            value=self._past_reconnects + current,
        )


def metrics_for(config: ShipperConfig) -> ShipperMetrics:
    """Metrics served on ``config.metrics_port``, or the do-nothing hooks when unset."""
    if config.metrics_port is None:
        return ShipperMetrics()
    return PrometheusShipperMetrics(host=config.metrics_host, port=config.metrics_port)
