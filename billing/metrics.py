"""Prometheus metrics for the billing consumer, served with ``/healthz`` and ``/readyz``.

The :class:`~billing.consumer.BillingConsumer` calls a few hooks: when it starts and
closes, when it is bound to its stream, and once per applied batch (outcomes, apply
latency, lag). With ``metrics_port`` unset it gets :class:`ConsumerMetrics`, whose hooks
do nothing; with a port, :class:`PrometheusConsumerMetrics`, which owns a registry of its
own and the shared HTTP server (:mod:`usage_runtime.health`).

Metric names (all prefixed ``usage_billing_``)::

    events_total{outcome}          counter   billed | unpriced | duplicate (absorbed by the
                                             inbox) | rejected | retry (not stored, nak-ed)
    lag_seconds                    histogram event timestamp to the commit that recorded it
                                             (billed and unpriced: first recordings only)
    batch_apply_seconds            histogram one batch's database work, commit included
    consumer_pending_messages      gauge     in the stream, not yet delivered to this
                                             durable consumer (read at scrape time)
    nats_reconnects_total          counter   reconnects nats-py made
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence

import nats.errors
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.config import BillingConfig
from billing.items import Item, Outcome, Usage
from outbox.probes import PROBE_TIMEOUT, database_problem, reader_engine
from usage_runtime.health import HealthServer, nats_problem
from usage_runtime.histograms import LAG_BUCKETS, LATENCY_BUCKETS, BatchHistogram

logger = logging.getLogger("billing.metrics")

#: Scrapes within this many seconds of the last consumer-info request reuse it.
PENDING_MAX_AGE = 1.0

_RECORDED = frozenset({Outcome.BILLED, Outcome.UNPRICED})


class ConsumerMetrics:
    """The hooks the consumer calls; this base does nothing (metrics off)."""

    server: HealthServer | None = None

    async def start(self, engine: AsyncEngine) -> None:
        """The consumer is starting on ``engine``: serve from now on (idempotent)."""

    async def stop(self) -> None:
        """The consumer is closing: stop serving (idempotent)."""

    def connected(self, client: Client, stream: str) -> None:
        """The consumer is bound to ``stream`` over ``client``."""

    def applied(
        self, items: Sequence[Item], outcomes: Sequence[Outcome], *, now: float, seconds: float
    ) -> None:
        """A batch was applied (committed at ``now``, in ``seconds``)."""


class PrometheusConsumerMetrics(ConsumerMetrics):
    def __init__(
        self,
        *,
        durable: str,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.durable = durable
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "usage_billing_events",
            "Deliveries handled, by outcome: billed, unpriced (recorded, no price yet), "
            "duplicate (already recorded: absorbed), rejected (kept in rejected_events), "
            "retry (not stored: redelivered later)",
            ["outcome"],
            registry=r,
        )
        for outcome in Outcome:
            self.events.labels(outcome.value)
        self.lag = BatchHistogram(
            "usage_billing_lag_seconds",
            "Time from an event's timestamp to the commit that recorded it, seconds",
            LAG_BUCKETS,
            r,
        )
        self.apply_seconds = Histogram(
            "usage_billing_batch_apply_seconds",
            "Time to apply one fetched batch to the database, commit included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(self)  # collect() below: values read at scrape time
        self.server = HealthServer(
            r, host=host, port=port, ready=self.readiness, refresh=self.refresh
        )
        self._serving = False
        self._engine: AsyncEngine | None = None
        self._owns_engine = False
        self._client: Client | None = None
        self._stream: str | None = None
        self._pending: int | None = None
        self._past_reconnects = 0  # reconnects of connections already replaced
        self._pending_read_at = -PENDING_MAX_AGE

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, engine: AsyncEngine) -> None:
        if self._serving:
            return
        assert self.server is not None
        await self.server.start()  # first: a port in use must leave nothing to clean up
        self._engine = reader_engine(engine)
        self._owns_engine = self._engine is not engine
        self._serving = True

    async def stop(self) -> None:
        if not self._serving:
            return
        self._serving = False
        assert self.server is not None
        await self.server.close()
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
        self._engine = None

    # -- hooks -----------------------------------------------------------------------------

    def connected(self, client: Client, stream: str) -> None:
        if self._client is not None and self._client is not client:
            self._past_reconnects += self._client.stats["reconnects"]  # stays monotonic
        self._client, self._stream = client, stream

    def applied(
        self, items: Sequence[Item], outcomes: Sequence[Outcome], *, now: float, seconds: float
    ) -> None:
        self.apply_seconds.observe(seconds)
        counts: dict[Outcome, int] = {}
        lags: list[float] = []
        for item, outcome in zip(items, outcomes, strict=True):
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome in _RECORDED and isinstance(item, Usage):
                lags.append(now - item.record.timestamp.timestamp())
        for outcome, count in counts.items():
            self.events.labels(outcome.value).inc(count)
        self.lag.observe_many(lags)

    # -- read at scrape time ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask the server how far behind the durable consumer is, at most once a second."""
        client, stream = self._client, self._stream
        if client is None or stream is None or not client.is_connected:
            return
        if time.monotonic() - self._pending_read_at < PENDING_MAX_AGE:
            return
        self._pending_read_at = time.monotonic()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                info = await client.jetstream(timeout=PROBE_TIMEOUT).consumer_info(
                    stream, self.durable
                )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            logger.debug("consumer info failed: %r", exc)
            return
        self._pending = info.num_pending

    async def readiness(self) -> str | None:
        problem = await nats_problem(self._client, self._stream)
        if problem is not None:
            return problem
        if self._engine is None:
            return "database not open"
        return await database_problem(self._engine)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("usage_billing_consumer_pending_messages", "")
        yield CounterMetricFamily("usage_billing_nats_reconnects", "")

    def collect(self) -> Iterator[Metric]:
        if self._pending is not None:
            yield GaugeMetricFamily(
                "usage_billing_consumer_pending_messages",
                "Messages in the stream not yet delivered to this durable consumer",
                value=self._pending,
            )
        yield CounterMetricFamily(
            "usage_billing_nats_reconnects",
            "Reconnects nats-py made after the connection dropped",
            value=self._past_reconnects + (self._client.stats["reconnects"] if self._client else 0),
        )


def metrics_for(config: BillingConfig) -> ConsumerMetrics:
    """Metrics served on ``config.metrics_port``, or the do-nothing hooks when unset."""
    if config.metrics_port is None:
        return ConsumerMetrics()
    return PrometheusConsumerMetrics(
        durable=config.durable, host=config.metrics_host, port=config.metrics_port
    )
