"""The JetStream side of billing: the stream it reads and its durable pull consumer.

* The stream: chosen by the shipper's rule (:mod:`usage_runtime.streams`): the one named
  in the configuration (default ``billing-stream``) when it exists and captures the usage
  subjects (when it does not, billing refuses to start, as the shipper does); else
  another stream that captures them (an operator's naming); else, when allowed, billing
  creates it as the shipper would (``outbox.stream_spec``: file storage, subjects ``billing.>``, a
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
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from billing.config import FILTER_SUBJECT, BillingConfig
from billing.errors import BillingConfigError, BillingError
from outbox.stream_spec import DEFAULT_STREAM_SUBJECTS, OWN_SUBJECTS, USAGE_SUBJECTS, captures
from usage_runtime.streams import StreamRefused, find_or_create_stream

logger = logging.getLogger("billing.jetstream")

#: The shipper's default; a longer window absorbs more retries in the broker already.
DUPLICATE_WINDOW_SECONDS: Final = 600.0


class StreamUnavailable(BillingError):
    """No stream captures the usage subjects and billing may not create one."""


def _own_subjects(subjects: list[str] | None) -> bool:
    # The shipper's rule: a stream with the one-token usage subjects will do (the
    # shipper warns when it lacks the multi-token ones of other producers).
    return captures(subjects, OWN_SUBJECTS)


async def ensure_stream(js: JetStreamContext, config: BillingConfig) -> str:
    """Return the stream to read, creating it when missing and allowed
    (:func:`usage_runtime.streams.find_or_create_stream`: the shipper's rule too).

    Raises :class:`StreamUnavailable` when it is missing and ``create_stream`` is off,
    and :class:`BillingConfigError` when the named stream exists without the usage
    subjects or cannot be created for good: only an operator can fix those.
    """
    create = StreamConfig(
        name=config.stream,
        subjects=list(DEFAULT_STREAM_SUBJECTS),
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=config.stream_max_age,
        allow_batched=True,  # as the shipper creates it: its fast-ingest batches
    )
    try:
        found = await find_or_create_stream(
            js,
            config.stream,
            subject=OWN_SUBJECTS,
            captures=_own_subjects,
            wanted=USAGE_SUBJECTS,
            create=create if config.create_stream else None,
        )
    except StreamRefused as exc:
        hint = "" if exc.api_error is not None else " with --stream"
        raise BillingConfigError(f"{exc}{hint}") from exc
    if found is None:
        raise StreamUnavailable(
            f"no stream captures {USAGE_SUBJECTS!r} yet (stream {config.stream!r}) "
            "and stream creation is off"
        )
    return found.name


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
