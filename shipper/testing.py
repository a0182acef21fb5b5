"""An in-memory outbound side for tests: :class:`InMemoryLink`, a :class:`shipper.link.Link`
with no network, modelled on procrastinate's ``InMemoryConnector``.

It keeps what a JetStream stream would (one message per ``Nats-Msg-Id``: a re-sent id is
answered as a duplicate, as JetStream's de-duplication window does), records every
publish call, and can be told to misbehave, each fault used up as it strikes:

* :meth:`InMemoryLink.fail_connect`: ``ensure`` raises :class:`TransientError` (NATS down);
* :meth:`InMemoryLink.fail_publish`: a publish raises :class:`TransientError` (the
  connection cannot take the batch);
* :meth:`InMemoryLink.answer`: the next answers for an event id: ``Outcome.RETRY`` (a
  per-row timeout, a 409), ``REJECTED`` (the stream refuses it for good), ``UNREACHABLE``
  (no stream responders), ``DUPLICATE`` (the stream had it already);
* :meth:`InMemoryLink.time_out`: no PubAck for an event id within the publish timeout;
* :meth:`InMemoryLink.crash_on`: publishing a batch holding an event id raises
  ``RuntimeError``, a stand-in for a row that trips a bug and kills the process;
* :meth:`InMemoryLink.hold`: publishes wait until :meth:`InMemoryLink.release`, so a test
  sees a batch in flight.

The drain reads per-message results only (a fast-ingest publisher turns its stored
counts into them), so there is no count to mimic here. Not for production: nothing here
is durable.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from shipper.errors import TransientError
from shipper.link import LinkHooks
from shipper.publisher import Message, Outcome, Result
from shipper.stream import StreamChoice

__all__ = ["InMemoryLink", "Publish"]

#: nats-server's default max_payload (1 MiB).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class Publish:
    """One publish call as the shipper made it."""

    event_ids: tuple[str, ...]
    one_by_one: bool  # the batch was suspect: one PubAck per message
    results: tuple[Result, ...] = ()  # what it was answered ((): it raised)


@dataclass
class _Faults:
    connect: deque[str] = field(default_factory=deque)
    publish: deque[str] = field(default_factory=deque)
    answers: defaultdict[str, deque[Result]] = field(default_factory=lambda: defaultdict(deque))
    crash_on: set[str] = field(default_factory=set)


class InMemoryLink:
    """A :class:`shipper.link.Link` that stores in memory (see the module docstring)."""

    def __init__(
        self, *, stream: str = "billing-stream", max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self.stream: StreamChoice | None = None
        self._stream_name = stream
        self._max_payload = max_payload
        self.hooks = LinkHooks()
        #: The stream's content: one message per Nats-Msg-Id, in the order first stored.
        self.stored: dict[str, Message] = {}
        #: Every publish call, in order.
        self.publishes: list[Publish] = []
        self.connects = 0
        self.stream_checks = 0  # stream_unsure() calls: a stream found missing
        self.stop_deadline: float | None = None
        self.closed = 0
        self._connected = False
        self._faults = _Faults()
        self._gate = asyncio.Event()
        self._gate.set()
        self._hold_from = 0
        #: Publish calls begun, and those waiting now (see hold()).
        self.entered = 0
        self.held = 0

    # -- telling it what to do ---------------------------------------------------------

    def fail_connect(self, times: int = 1, reason: str = "connection refused") -> None:
        self._faults.connect.extend([reason] * times)

    def fail_publish(self, times: int = 1, reason: str = "connection closed") -> None:
        self._faults.publish.extend([reason] * times)

    def answer(self, event_id: str, outcome: Outcome, detail: str = "", *, times: int = 1) -> None:
        """Answer the next ``times`` publishes of ``event_id`` with ``outcome``."""
        self._faults.answers[event_id].extend([Result(outcome, detail)] * times)

    def time_out(self, event_id: str, *, times: int = 1) -> None:
        """No PubAck for ``event_id`` within the publish timeout, ``times`` times."""
        self.answer(event_id, Outcome.RETRY, "no PubAck before the publish timeout", times=times)

    def crash_on(self, event_id: str) -> None:
        self._faults.crash_on.add(event_id)

    def hold(self, *, after: int = 0) -> None:
        """Make publishes wait (their batches stay in flight) until :meth:`release`,
        letting the next ``after`` publishes through first."""
        self._hold_from = self.entered + after
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    # -- what tests read ---------------------------------------------------------------

    @property
    def stored_ids(self) -> list[str]:
        return list(self.stored)

    @property
    def sent_ids(self) -> list[str]:
        """Every event id handed to a publish, repeats included, in order."""
        return [event_id for call in self.publishes for event_id in call.event_ids]

    # -- the Link --------------------------------------------------------------------------

    def bind(self, hooks: LinkHooks) -> None:
        self.hooks = hooks

    @property
    def publisher(self) -> InMemoryLink:
        return self

    @property
    def max_payload(self) -> int:
        return self._max_payload

    async def ensure(self) -> None:
        if self._connected:
            return
        if self._faults.connect:
            reason = self._faults.connect.popleft()
            if self.hooks.on_trouble is not None:
                self.hooks.on_trouble(f"cannot connect to nats in-memory: {reason}")
            raise TransientError(f"cannot connect to nats in-memory: {reason}")
        self._connected = True
        self.connects += 1
        self.hooks.stats.connections += 1
        self.stream = StreamChoice(name=self._stream_name, created=not self.stored)

    def stream_unsure(self) -> None:
        self.stream_checks += 1

    def stop_by(self, deadline: float) -> None:
        if self.stop_deadline is None or deadline < self.stop_deadline:
            self.stop_deadline = deadline
        self._gate.set()  # a stop does not wait for a held publish

    async def close(self) -> None:
        self._connected = False
        self.closed += 1

    async def publish(
        self, messages: Sequence[Message], *, one_by_one: bool = False
    ) -> list[Result]:
        ids = tuple(message.headers[MSG_ID] for message in messages)
        self.entered += 1
        if not self._gate.is_set() and self.entered > self._hold_from:
            self.held += 1
            try:
                await self._gate.wait()
            finally:
                self.held -= 1
        if self._faults.publish:
            self._connected = False  # the connection is gone: the next ensure reconnects
            self.publishes.append(Publish(ids, one_by_one))
            raise TransientError(
                f"nats connection cannot publish: {self._faults.publish.popleft()}"
            )
        if self._faults.crash_on.intersection(ids):
            self.publishes.append(Publish(ids, one_by_one))
            raise RuntimeError("the shipper crashed on this row")
        results = [
            self._store(event_id, message) for event_id, message in zip(ids, messages, strict=True)
        ]
        self.publishes.append(Publish(ids, one_by_one, tuple(results)))
        await asyncio.sleep(0)  # the acks come back on a later turn of the loop
        return results

    def _store(self, event_id: str, message: Message) -> Result:
        scripted = self._faults.answers.get(event_id)
        if scripted:
            result = scripted.popleft()
            if result.outcome in (Outcome.STORED, Outcome.DUPLICATE):
                self.stored.setdefault(event_id, message)
            return result
        if event_id in self.stored:
            return Result(Outcome.DUPLICATE)
        self.stored[event_id] = message
        return Result(Outcome.STORED)
