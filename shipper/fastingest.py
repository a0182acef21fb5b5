"""JetStream fast-ingest batch publishing (ADR-50, nats-server 2.14+): one flow ack per
up to ``flow`` messages instead of one PubAck per message.

nats-py 2.16 has no batch publisher, so the protocol is written here (orbit.go's
``FastPublisher`` is the reference design). Every message of a batch carries the batch's
state in its reply subject::

    <inbox>.<batch id>.<flow>.fail.<batch sequence>.<op>.$FI

op 0 starts the batch, 1 appends, 2 stores the last message and commits. The server
answers on those reply subjects: ``{"type":"ack","seq":N,"msgs":F}`` now and then
(messages 1..N are stored; the next ack comes after F more), and the final PubAck
``{"stream":..,"seq":..,"batch":..,"count":K}`` (messages 1..K are stored). With gap =
fail the batch ends at the first message that fails: the server answers it with a plain
error PubAck, a ``gap`` notice and the final PubAck, and refuses the rest of the batch.
A ``Nats-Msg-Id`` the stream already has is skipped and counted as stored, so a re-sent
batch is safe, unlike an atomic batch, which is refused whole.

One drain step's batch is one fast-ingest batch. Messages 1..K are settled as stored
(the final PubAck's ``count``, or, when it never came, the last flow ack's ``seq``); the
rest, from the one that failed on, go through the per-message :class:`Publisher`, so the
failing row gets exactly today's treatment (retry, or dead with the server's reason) and
the rows after it are not held back by it. A stored message is counted as new unless the
final PubAck says none was (``seq`` 0: the whole batch was a re-send); the acks do not
say which ones of a mixed batch were duplicates. A batch the shipper suspects (one it
re-sends after a crash) is published per message instead, see
:meth:`FastIngestPublisher.publish`.

Batch ids are the stream's: the server keeps a batch open for 10 s after its last
message, and a batch under the same id, from any connection, is taken for its
continuation (answered with a ``gap`` and the *old* batch's final PubAck). So every
publisher draws a random part for its ids, and a gap that says the server expected a
later sequence than the one sent marks the batch as not ours: nothing of it is taken as
stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from shipper.errors import TransientError
from shipper.frames import Sender, hpub_frame, sender_for
from shipper.publisher import Message, Outcome, Publisher, Result

logger = logging.getLogger("shipper")

#: nats-server's err_code for "batch publish is disabled" on the stream (errors.json).
BATCH_DISABLED = 10205
#: ... and "batch publish ID unknown": an answer to a message after the batch ended.
BATCH_UNKNOWN = 10208
#: The first server release with fast-ingest batches.
MIN_SERVER = (2, 14, 0)
#: Flow asked of the server: a flow ack per this many messages (it allows up to 500 and
#: ramps up to it from 1). Measured with ``bench.shipper``'s fast-ingest ceiling row:
#: 100 / 250 / 500 within the noise of each other for 1,000-message batches; 250 keeps
#: the acks of a batch to a handful while a slow server still gets a say every 250.
DEFAULT_FLOW = 250
#: Messages sent beyond the last flow ack before waiting for the next one.
DEFAULT_WINDOW = 4 * DEFAULT_FLOW

MSG_ID = "Nats-Msg-Id"
#: Message ids remembered as sent-without-answer, at most (then forgotten).
UNSURE_LIMIT = 100_000
#: Outcomes that leave it open whether JetStream stored the message.
_UNSURE = frozenset({Outcome.RETRY, Outcome.UNREACHABLE})

_STORED = Result(Outcome.STORED)
_DUPLICATE = Result(Outcome.DUPLICATE)
_START, _APPEND, _COMMIT = 0, 1, 2


class _Batch:
    """What the server said so far about one fast-ingest batch."""

    __slots__ = (
        "acked",
        "count",
        "disabled",
        "done",
        "duplicates",
        "failed",
        "foreign",
        "progress",
    )

    def __init__(self) -> None:
        self.acked = 0  # highest batch sequence a flow ack says is stored
        self.count: int | None = None  # the final PubAck's count
        self.duplicates = False  # the final PubAck says the stream had every one already
        self.failed = False  # an error or a gap: the batch has ended short
        self.disabled = False  # the stream refuses batches (allow_batched off)
        self.done = asyncio.Event()  # the final PubAck is in (or the batch failed)
        self.progress = asyncio.Event()  # any answer came in
        # The server expected a later sequence than we sent: its batch under this id is
        # not ours (see FastIngestPublisher.__init__), nor are its counts.
        self.foreign = False

    @property
    def stored(self) -> int:
        if self.foreign:
            return 0
        return self.count if self.count is not None else self.acked


class FastIngestPublisher:
    """Publishes each batch as one fast-ingest batch, per message where it must.

    Same interface as :class:`Publisher`, which it drives for what a batch cannot do.
    """

    def __init__(
        self,
        client: Client,
        per_message: Publisher,
        *,
        timeout: float,
        flow: int = DEFAULT_FLOW,
        window: int = DEFAULT_WINDOW,
        unsure: set[str] | None = None,
    ) -> None:
        self._client = client
        self.per_message = per_message
        self._timeout = timeout
        self._flow = flow
        self._window = max(window, flow)
        self._prefix = client.new_inbox()
        self._batches: dict[str, _Batch] = {}
        # Batch ids are the stream's, not the connection's: a batch left open (a shipper
        # stopped or killed mid-batch) stays on the stream for 10 s, and a new batch
        # under its id is taken for its continuation. Measured: a second connection's
        # batch "1" got a gap and then the old batch's final PubAck, count 20, for 20
        # messages of which none was stored; a counter from 1 per publisher reused the
        # ids of the run before and its rows were deleted unsent. So each publisher's
        # ids carry a random part of their own.
        self._id_base = secrets.token_hex(8)
        self._next_id = 0
        # Ids of messages sent without an answer (shared by the link's publishers, so it
        # outlives a connection): see _holds_unsure.
        self._unsure: set[str] = unsure if unsure is not None else set()
        self._subscription: Subscription | None = None
        self._send: Sender = sender_for(client)
        self._cutoff: float | None = None
        self._cut = asyncio.Event()
        #: Set when the stream answered "batch publish is disabled": per message from then.
        self.disabled = False

    @property
    def mode(self) -> str:
        return "per_message" if self.disabled else "fast_ingest"

    @property
    def max_payload(self) -> int:
        return self._client.max_payload

    async def start(self) -> None:
        await self.per_message.start()
        self._subscription = await self._client.subscribe(
            f"{self._prefix}.>",
            cb=self._on_reply,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    def cut_short(self, at: float) -> None:
        """A stop is under way: see :meth:`Publisher.cut_short`."""
        self._cutoff = at if self._cutoff is None else min(at, self._cutoff)
        self._cut.set()
        self.per_message.cut_short(at)

    async def publish(
        self, messages: Sequence[Message], *, one_by_one: bool = False
    ) -> list[Result]:
        """Publish ``messages`` as one batch; one result per message, in order.

        ``one_by_one``: a batch the shipper suspects (a row in it had an attempt without a
        PubAck, e.g. it was in flight when a shipper died) goes per message, so each
        re-sent row is answered as new or duplicate and a row that may have crashed a
        shipper is handled alone. Raises :class:`TransientError` when the connection
        cannot take the messages at all.
        """
        if (
            one_by_one
            or self.disabled
            or len(messages) < 2  # could not end in a commit that stores its message
            or self._cutoff is not None
            or self._holds_unsure(messages)
        ):
            return await self._per_message(messages)
        try:
            batch, sent = await self._publish_batch(messages)
        except TransientError:
            self._remember_unsure(messages)
            raise
        stored = min(batch.stored, sent)
        if batch.disabled and not self.disabled:
            self.disabled = True
            logger.warning(
                "stream refuses fast-ingest batches (allow_batched was turned off?): "
                "publishing one PubAck per message on this connection",
                extra={"action": "publish_mode", "mode": "per_message"},
            )
        results = [_DUPLICATE if batch.duplicates else _STORED] * stored
        if stored == len(messages):
            return results
        rest = messages[stored:]
        try:
            results.extend(await self._per_message(rest))
        except TransientError as exc:
            if not stored:
                raise
            # What the batch stored is known; the rest meets the connection's trouble.
            results.extend([Result(Outcome.UNREACHABLE, str(exc))] * len(rest))
        return results

    async def _per_message(self, messages: Sequence[Message]) -> list[Result]:
        """One PubAck per message; remembers those that got no clear answer."""
        try:
            results = await self.per_message.publish(messages)
        except TransientError:
            self._remember_unsure(messages)
            raise
        self._remember_unsure(
            [m for m, r in zip(messages, results, strict=True) if r.outcome in _UNSURE]
        )
        return results

    def _holds_unsure(self, messages: Sequence[Message]) -> bool:
        """Whether a message here was sent before without an answer: it may be stored,
        so the batch goes per message, whose PubAcks tell new from duplicate."""
        unsure = self._unsure
        if not unsure:
            return False
        ids = [m.headers.get(MSG_ID) for m in messages]
        if unsure.isdisjoint(ids):
            return False
        unsure.difference_update(ids)
        return True

    def _remember_unsure(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if len(self._unsure) + len(messages) > UNSURE_LIMIT:
            self._unsure.clear()  # only the duplicate counts get less exact
        self._unsure.update(m.headers.get(MSG_ID, "") for m in messages)

    async def _publish_batch(self, messages: Sequence[Message]) -> tuple[_Batch, int]:
        """Send ``messages`` as one fast-ingest batch, at most ``window`` beyond the last
        flow ack, and wait for its end; return what the server said and how many were
        sent (those after the first failure are not)."""
        self._next_id += 1
        batch_id = f"{self._id_base}{self._next_id}"
        batch = _Batch()
        self._batches[batch_id] = batch
        reply_prefix = f"{self._prefix}.{batch_id}.{self._flow}.fail."
        last = len(messages)
        deadline = time.monotonic() + self._timeout
        sent = 0
        try:
            while sent < last and not batch.failed:
                if sent - batch.acked >= self._window:
                    batch.progress.clear()
                    if not await self._wait(batch.progress, deadline):
                        break
                    continue
                chunk_end = min(last, batch.acked + self._window)
                pairs: list[tuple[Message, str]] = []
                frames: list[bytes] = []
                for sequence in range(sent + 1, chunk_end + 1):
                    op = _START if sequence == 1 else _COMMIT if sequence == last else _APPEND
                    reply = f"{reply_prefix}{sequence}.{op}.$FI"
                    message = messages[sequence - 1]
                    frames.append(hpub_frame(message, reply))
                    pairs.append((message, reply))
                await self._send(frames, pairs)
                sent = chunk_end
            if sent == last:
                await self._wait(batch.done, deadline)
        except (ConnectionClosedError, OutboundBufferLimitError) as exc:
            if not batch.stored:
                raise TransientError(f"nats connection cannot publish: {exc!r}") from exc
        finally:
            self._batches.pop(batch_id, None)
        if not batch.progress.is_set() and not batch.done.is_set() and sent:
            raise TransientError(
                f"no PubAck (fast-ingest) for any of {last} messages within {self._timeout} s"
            )
        return batch, sent

    async def _wait(self, event: asyncio.Event, deadline: float) -> bool:
        """Wait for ``event`` until ``deadline`` or a stop's cutoff; whether it was set."""
        while not event.is_set():
            end = deadline if self._cutoff is None else min(deadline, self._cutoff)
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            waiting = asyncio.ensure_future(event.wait())
            cut = asyncio.ensure_future(self._cut.wait()) if self._cutoff is None else None
            try:
                await asyncio.wait(
                    [task for task in (waiting, cut) if task is not None],
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiting.cancel()
                if cut is not None:
                    cut.cancel()
        return True

    async def _on_reply(self, msg: Msg) -> None:
        # <prefix>.<batch id>.<flow>.<gap>.<seq>.<op>.$FI: the batch id is 6th from the end.
        tokens = msg.subject.rsplit(".", 6)
        batch = self._batches.get(tokens[1]) if len(tokens) == 7 else None
        if batch is None:
            return  # a batch that gave up waiting, or an answer after its end
        data = msg.data
        batch.progress.set()
        if data.startswith(b'{"type":"ack"'):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                batch.acked = max(batch.acked, int(json.loads(data)["seq"]))
            return
        if data.startswith(b'{"type":'):  # "gap" or "err": the batch ends short
            batch.failed = True
            if data.startswith(b'{"type":"gap"'):
                batch.foreign = batch.foreign or _ahead_of_us(data)
            return
        answer = _parse(data)
        error = answer.get("error")
        if isinstance(error, dict):
            batch.failed = True
            code = error.get("err_code")
            if code == BATCH_DISABLED:
                batch.disabled = True
            elif code != BATCH_UNKNOWN and batch.count is None:
                # The message that failed: with gap = fail every message before it is
                # stored (an earlier failure would have ended the batch). A final PubAck
                # follows only when it failed in the middle; not for the first or last.
                with contextlib.suppress(ValueError):
                    batch.count = max(batch.acked, int(tokens[4]) - 1)
            batch.done.set()
            return
        count = answer.get("count")
        if isinstance(count, int):
            batch.count = count
            # seq 0: nothing new was stored, every message was a duplicate (a re-send).
            batch.duplicates = answer.get("seq") == 0
        batch.done.set()

    async def close(self) -> None:
        if self._subscription is not None and not self._client.is_closed:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        self._subscription = None
        await self.per_message.close()


def _ahead_of_us(gap: bytes) -> bool:
    """A gap report ``{"type":"gap","last_seq":E,"seq":S}`` (E: the sequence the server
    expected, S: the one it got) with E > S: the server's batch was further on than
    anything we sent, so it was another's. A lost message of ours gives E < S."""
    answer = _parse(gap)
    expected, got = answer.get("last_seq"), answer.get("seq")
    return isinstance(expected, int) and isinstance(got, int) and expected > got


def _parse(data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def server_supports_batches(version: Any) -> bool:
    """Whether nats-py's ``ServerVersion`` is 2.14.0 or later."""
    try:
        have = (int(version.major), int(version.minor), int(version.patch))
    except (AttributeError, TypeError, ValueError):
        return False
    return have >= MIN_SERVER
