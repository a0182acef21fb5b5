"""The shipper's outbound port and its JetStream implementation.

:class:`Link` is everything the shipper needs of the way out (Watermill's forwarder
takes its publisher the same way): connect when needed, a publisher that says per
message what became of it, the stream checked, and a stop with a deadline. The shipper
is given one (``Shipper(config, link=...)``) or builds a :class:`JetStreamLink`;
:mod:`shipper.testing` holds an in-memory one for the unit tier.

:class:`JetStreamLink` is a connection found through discovery, the stream checked on
it, and the publisher on top; rebuilt whole when the connection is gone. nats-py
reconnects on its own for a while; when it gives up, the connection is closed for good,
and the next :meth:`JetStreamLink.ensure` asks discovery again and builds a new one
rather than letting the process die.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client

from shipper.config import ShipperConfig
from shipper.connection import connect
from shipper.discovery import Discovery
from shipper.errors import ConfigError, TransientError
from shipper.fastingest import FastIngestPublisher, server_supports_batches
from shipper.metrics import ShipperMetrics
from shipper.publisher import Message, Publisher, Result
from shipper.stats import ShipperStats
from shipper.stream import StreamChoice, ensure_stream
from usage_runtime.nats import CREDENTIAL_HINT, NatsRefused
from usage_runtime.redact import redact_url
from usage_runtime.signals import unless_stopped

logger = logging.getLogger("shipper")


class Publishing(Protocol):
    """What the drain asks of a publisher (:class:`Publisher`, FastIngestPublisher)."""

    @property
    def max_payload(self) -> int: ...

    async def publish(self, messages: Sequence[Message], *, one_by_one: bool = ...) -> list[Result]:
        """One result per message, in order; :class:`TransientError` when the connection
        cannot take the messages at all. ``one_by_one``: a suspect batch (one PubAck per
        message, even where batches are possible)."""
        ...


@dataclass
class LinkHooks:
    """What the shipper lends its link (:meth:`Link.bind`): its stop, counters, metrics
    and an ear for connection trouble met before a connect gives up."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ShipperStats = field(default_factory=ShipperStats)
    metrics: ShipperMetrics = field(default_factory=ShipperMetrics)
    on_trouble: Callable[[str], None] | None = None


class Link(Protocol):
    """The shipper's outbound port."""

    #: The stream last checked, with what about it can lose events (None before).
    stream: StreamChoice | None

    def bind(self, hooks: LinkHooks) -> None:
        """Called once by the shipper that drives this link, before anything else."""
        ...

    @property
    def publisher(self) -> Publishing:
        """The publisher of the live connection (after :meth:`ensure`)."""
        ...

    async def ensure(self) -> None:
        """Connect if needed: :class:`TransientError` while the way out is not there,
        :class:`ConfigError` when it never will be as configured."""
        ...

    def stream_unsure(self) -> None:
        """Rows found no stream responder: check the stream before the next batch."""
        ...

    def stop_by(self, deadline: float) -> None:
        """A stop was asked for: wait for answers until ``deadline`` (monotonic) at most."""
        ...

    async def close(self) -> None: ...


class JetStreamLink:
    def __init__(self, config: ShipperConfig) -> None:
        self.config = config
        self.bind(LinkHooks())
        self._discovery = Discovery(config)
        self._client: Client | None = None
        self._closed = asyncio.Event()  # set by the connection's callbacks, or by close()
        self._publisher: Publisher | FastIngestPublisher | None = None
        self._mode: str | None = None  # the publish mode last announced
        # Message ids sent without an answer, kept across connections (FastIngestPublisher)
        self._unsure: set[str] = set()
        self._stream_ready = False  # ensure_stream succeeded on the current connection
        #: The stream last checked, with what about it can lose events (None before).
        self.stream: StreamChoice | None = None
        self._stop_deadline: float | None = None

    def bind(self, hooks: LinkHooks) -> None:
        self.stats = hooks.stats
        self.metrics = hooks.metrics
        self._stop = hooks.stop
        #: Hears what stands in the way while a connection is being tried (see ensure).
        self.on_trouble = hooks.on_trouble

    @property
    def publisher(self) -> Publisher | FastIngestPublisher:
        assert self._publisher is not None, "JetStreamLink.ensure() builds the publisher"
        return self._publisher

    def stream_unsure(self) -> None:
        """Rows found no stream responder: check the stream again before the next batch."""
        self._stream_ready = False

    def stop_by(self, deadline: float) -> None:
        """A stop was asked for: PubAcks are awaited until a little before ``deadline``
        (monotonic), and the rest of the time is kept for closing the connection. The
        first stop's deadline holds: asking again does not extend it."""
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._publisher is not None:
            self._publisher.cut_short(self._stop_deadline - self._close_reserve)

    @property
    def _close_reserve(self) -> float:
        return min(1.0, self.config.shutdown_timeout / 4)

    async def ensure(self) -> None:
        """Connect if there is no live connection; raise :class:`TransientError` while
        JetStream cannot be reached, :class:`ConfigError` when it never will be as
        configured."""
        if self._client is not None and not self._closed.is_set():
            if not self._stream_ready:
                # The stream may have been deleted under a live connection. Check (and,
                # if allowed, create) it again before claiming.
                try:
                    self._chose(
                        await ensure_stream(
                            self._client.jetstream(timeout=self.config.publish_timeout),
                            self.config,
                        )
                    )
                except ConfigError:
                    raise
                except Exception as exc:
                    raise TransientError(f"stream not available: {exc!r}") from exc
                self._stream_ready = True
            return
        await self.close()
        servers = await self._discovery.servers()
        self._closed = asyncio.Event()
        shown = ", ".join(redact_url(server) for server in servers)
        last_attempt: list[Exception] = []

        def attempt_failed(exc: Exception) -> None:
            # The first connect retries each server for a while before it gives up: say
            # what stands in the way now, not only once it has given up.
            last_attempt[:] = [exc]
            if self.on_trouble is not None:
                self.on_trouble(f"cannot connect to nats {shown}: {_reason(exc)}")

        try:
            client = await self._unless_stopped(
                connect(self.config, servers, self._closed, attempt_failed=attempt_failed)
            )
        except NatsRefused as exc:
            if self.stats.connections == 0:
                # Never connected: wrong credentials or TLS settings, not an outage. Say so
                # and stop (exit 2) rather than retry for ever; the rows stay pending.
                raise ConfigError(
                    f"nats refused the connection: {exc} ({CREDENTIAL_HINT})"
                ) from exc
            # Worked before: maybe rotated credentials; keep trying (with the rows kept).
            raise TransientError(f"nats refused the connection: {exc}") from exc
        except Exception as exc:
            # nats-py's final NoServersError says less than the attempt before it.
            reason = _reason(last_attempt[0] if last_attempt else exc)
            raise TransientError(f"cannot connect to nats {shown}: {reason}") from exc
        self._client = client
        try:
            js = client.jetstream(timeout=self.config.publish_timeout)
            choice = await ensure_stream(js, self.config)
            publisher = await self._publisher_for(client, choice.name)
            await publisher.start()
        except ConfigError:
            raise
        except Exception as exc:
            await self.close()
            raise TransientError(f"jetstream not ready: {exc!r}") from exc
        self._publisher = publisher
        self._stream_ready = True
        self.stats.connections += 1
        self.metrics.connected(client, choice.name)
        self._chose(choice)
        logger.info(
            "shipping to stream %s", choice.name, extra={"action": "ready", "stream": choice.name}
        )

    def _chose(self, choice: StreamChoice) -> None:
        self.stream = choice
        self.metrics.stream_risks(choice.risks)

    async def _publisher_for(self, client: Client, stream: str) -> Publisher | FastIngestPublisher:
        """Fast-ingest batches when the server (2.14+) and the stream (``allow_batched``)
        take them, else one PubAck per message; announced when the choice changes. The
        shipper never changes an operator's stream to get batches."""
        per_message = Publisher(
            client, timeout=self.config.publish_timeout, max_in_flight=self.config.max_in_flight
        )
        version = client.connected_server_version
        if not self.config.batch_publish:
            why = "batch publishing is turned off (--batch-publish false)"
        elif not server_supports_batches(version):
            why = f"nats-server {version} is older than 2.14"
        else:
            info = await client.jetstream(timeout=self.config.publish_timeout).stream_info(stream)
            why = (
                ""
                if info.config.allow_batched
                else (
                    f"stream {stream} does not set allow_batched (the shipper never changes an "
                    "operator's stream; set it to ship about twice as fast)"
                )
            )
        publisher: Publisher | FastIngestPublisher = (
            FastIngestPublisher(
                client, per_message, timeout=self.config.publish_timeout, unsure=self._unsure
            )
            if not why
            else per_message
        )
        mode = "fast_ingest" if not why else "per_message"
        self.metrics.publish_mode(mode)
        if mode != self._mode:
            self._mode = mode
            if why:
                logger.info(
                    "publishing with one PubAck per message: %s",
                    why,
                    extra={"action": "publish_mode", "mode": mode},
                )
            else:
                logger.info(
                    "publishing in fast-ingest batches (nats-server %s, stream %s)",
                    version,
                    stream,
                    extra={"action": "publish_mode", "mode": mode},
                )
        return publisher

    async def _unless_stopped(self, connecting: Coroutine[Any, Any, Client]) -> Client:
        """Await ``connecting`` unless a stop comes first. nats-py's first connect retries
        each server ``max_reconnect_attempts`` times, ``reconnect_time_wait`` apart (for
        ever when that is negative), so a stop must not wait for it."""
        client = await unless_stopped(connecting, self._stop)
        if client is None:
            raise TransientError("stopped while connecting")
        return client

    async def close(self) -> None:
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


def _reason(exc: BaseException) -> str:
    """A short, stable reason for a failed connect ("connection refused"), the same on
    every attempt, so a note's "since" stays when the problem began."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout"
    return str(exc) or type(exc).__name__
