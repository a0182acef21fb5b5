"""usage-outbox: record AI usage (billing) events in a durable outbox.

The write API joins the caller's transaction and never touches the network; the shipper
(``usage-shipper``) later publishes the rows to NATS JetStream.
"""

from __future__ import annotations

from outbox.contract import DEFAULT_MAX_PAYLOAD_BYTES, UsageEvent, build_usage_event
from outbox.errors import ConfigError, InvalidUsageEvent, OutboxError, OutboxStoreError
from outbox.legacy import UsageEventPublisherMixin
from outbox.schema import lease_table, metadata, outbox_table
from outbox.service import Outbox
from outbox.sqlite import configure_sqlite, create_outbox_engine
from outbox.subject import product_token, usage_subject
from outbox.write import (
    UsageArgs,
    record_usage,
    record_usage_sync,
    record_usages,
    record_usages_sync,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ConfigError",
    "InvalidUsageEvent",
    "Outbox",
    "OutboxError",
    "OutboxStoreError",
    "UsageArgs",
    "UsageEvent",
    "UsageEventPublisherMixin",
    "build_usage_event",
    "configure_sqlite",
    "create_outbox_engine",
    "lease_table",
    "metadata",
    "outbox_table",
    "product_token",
    "record_usage",
    "record_usage_sync",
    "record_usages",
    "record_usages_sync",
    "usage_subject",
]
