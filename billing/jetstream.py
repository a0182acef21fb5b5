"""The JetStream side of billing: the stream it reads and its durable pull consumer.

* The stream: the one named in the configuration (default ``billing-stream``) when it
  exists; else another stream that already captures the usage subjects (an operator's
  naming, as the shipper also adopts); else, when allowed, billing creates it as the
  shipper would (``outbox.stream_spec``: file storage, subjects ``billing.>``, a
  ``max_age`` and no count limit, a 10-minute de-duplication window), so the consumer can
  start before the first shipper. Creating races with a shipper doing the same are
  settled by taking whichever stream won.
* The consumer: durable (the server remembers acknowledgements across restarts of either
  side), explicit acks, ``max_ack_pending`` bounding what is in flight, ``ack_wait``
  before a redelivery, unlimited deliveries (billing parks a poison message itself,
  in ``rejected_events``, instead of letting the server drop it after N tries).
  ``add_consumer`` with the same name updates the settings that may change.
"""

from __future__ import annotations

import logging
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, NotFoundError

from billing.config import FILTER_SUBJECT, BillingConfig
from billing.errors import BillingError
from outbox.stream_spec import DEFAULT_STREAM_SUBJECTS, OWN_SUBJECTS, USAGE_SUBJECTS, captures

logger = logging.getLogger("billing.jetstream")

#: The shipper's default; a longer window absorbs more retries in the broker already.
DUPLICATE_WINDOW_SECONDS: Final = 600.0


class StreamUnavailable(BillingError):
    """No stream captures the usage subjects and billing may not create one."""


def _captures(info: StreamInfo) -> bool:
    # The shipper's rule: a stream with the one-token usage subjects will do (the
    # shipper warns when it lacks the multi-token ones of other producers).
    return captures(info.config.subjects, OWN_SUBJECTS)


async def find_stream(js: JetStreamContext, config: BillingConfig) -> str | None:
    """The name of the stream to read, or None when there is none yet."""
    try:
        await js.stream_info(config.stream)
        return config.stream
    except NotFoundError:
        pass
    try:
        other = await js.find_stream_name_by_subject(OWN_SUBJECTS)
    except NotFoundError:
        return None
    if other and _captures(await js.stream_info(other)):
        logger.info("reading existing stream %s", other, extra={"action": "stream_adopted"})
        return other
    return None


async def ensure_stream(js: JetStreamContext, config: BillingConfig) -> str:
    """Return the stream to read, creating it when missing and allowed.

    Raises :class:`StreamUnavailable` when it is missing and ``create_stream`` is off.
    """
    name = await find_stream(js, config)
    if name is not None:
        return name
    if not config.create_stream:
        raise StreamUnavailable(
            f"no stream captures {USAGE_SUBJECTS!r} yet (stream {config.stream!r}) "
            "and stream creation is off"
        )
    try:
        await js.add_stream(
            StreamConfig(
                name=config.stream,
                subjects=list(DEFAULT_STREAM_SUBJECTS),
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                max_age=config.stream_max_age,
                allow_batched=True,  # as the shipper creates it: its fast-ingest batches
            )
        )
        logger.info("created stream %s", config.stream, extra={"action": "stream_created"})
        return config.stream
    except BadRequestError:
        # Created meanwhile (by a shipper, or another consumer): use whatever won.
        name = await find_stream(js, config)
        if name is None:
            raise
        return name


def consumer_config(config: BillingConfig) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=config.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=FILTER_SUBJECT,
        max_ack_pending=config.max_ack_pending,
        ack_wait=config.ack_wait,
        max_deliver=-1,
        max_waiting=512,
    )


async def bind(js: JetStreamContext, config: BillingConfig) -> str:
    """Ensure the stream and the durable consumer; return the stream's name. Messages are
    then fetched with :class:`billing.puller.BatchPuller`."""
    stream = await ensure_stream(js, config)
    await js.add_consumer(stream, consumer_config(config))
    return stream
