"""The settings of ``usage-billing``: one option table, with flags and environment variables.

Every setting of :class:`~billing.config.BillingConfig` is an :class:`Option` here (the
config's defaults are what ``--help`` shows); :data:`BURST_OPTIONS` are the run's own
yes/no and timeout, which are not consumer settings.
"""

from __future__ import annotations

from typing import Final

from billing.engines import DEFAULT_DATABASE_URL
from outbox.stream_spec import STREAM_ENV, STREAM_MAX_AGE_ENV
from usage_runtime.options import Option, boolean, number, whole_number
from usage_runtime.shared_options import NATS_AUTH_OPTIONS, process_options

DATABASE = Option(
    "--database-url",
    "database_url",
    "BILLING_DATABASE_URL",
    "billing database, SQLAlchemy URL or SQLite file path",
    default=DEFAULT_DATABASE_URL,
)
RUN_OPTIONS: tuple[Option, ...] = (
    DATABASE,
    Option("--nats-url", "nats_url", "NATS_URL", "NATS servers, comma-separated"),
    # Credentials and TLS: the shipper's variables, so one set configures both.
    *NATS_AUTH_OPTIONS,
    # The stream settings are shared with the shipper: one variable names it for both.
    Option("--stream", "stream", STREAM_ENV, "JetStream stream to read"),
    Option(
        "--stream-max-age",
        "stream_max_age",
        STREAM_MAX_AGE_ENV,
        "max_age in seconds of a stream billing creates",
        parse=number,
        default="2592000, 30 days",
    ),
    Option("--durable", "durable", "BILLING_DURABLE", "durable consumer name"),
    Option(
        "--create-stream",
        "create_stream",
        "USAGE_CREATE_STREAM",
        "create the stream when none captures the usage subjects, else wait",
        parse=boolean,
    ),
    Option(
        "--batch-size",
        "batch_size",
        "BILLING_BATCH_SIZE",
        "messages per fetch and per transaction",
        parse=whole_number,
    ),
    Option(
        "--max-ack-pending",
        "max_ack_pending",
        "BILLING_MAX_ACK_PENDING",
        "unacknowledged messages at most",
        parse=whole_number,
    ),
    Option(
        "--parallel-batches",
        "parallel_batches",
        "BILLING_PARALLEL_BATCHES",
        "batches applied at once (0: 3 on PostgreSQL, 1 on SQLite)",
        parse=whole_number,
    ),
    Option(
        "--ack-wait",
        "ack_wait",
        "BILLING_ACK_WAIT",
        "seconds before an unacked message is redelivered",
        parse=number,
    ),
    Option(
        "--fetch-timeout",
        "fetch_timeout",
        "BILLING_FETCH_TIMEOUT",
        "seconds one fetch waits for messages",
        parse=number,
    ),
    Option(
        "--max-deliveries",
        "max_deliveries",
        "BILLING_MAX_DELIVERIES",
        "deliveries of a message that cannot be stored before it is parked as rejected",
        parse=whole_number,
    ),
    Option(
        "--retry-delay",
        "retry_delay",
        "BILLING_RETRY_DELAY",
        "seconds before a message that could not be stored comes back",
        parse=number,
    ),
    Option(
        "--connect-timeout",
        "connect_timeout",
        "BILLING_CONNECT_TIMEOUT",
        "seconds to connect to NATS",
        parse=number,
    ),
    Option(
        "--migrate",
        "migrate",
        "BILLING_MIGRATE",
        "run billing's migrations before consuming",
        parse=boolean,
    ),
    *process_options("BILLING"),
)

#: ``run``'s own options: how a burst run ends. Not consumer settings.
BURST_OPTIONS: tuple[Option, ...] = (
    Option(
        "--burst",
        "burst",
        "BILLING_BURST",
        "consume until no message arrives for --idle-timeout seconds, print the counters, exit",
        parse=boolean,
        default="false",
    ),
    Option(
        "--idle-timeout",
        "idle_timeout",
        "BILLING_IDLE_TIMEOUT",
        "with --burst: how long a quiet stream means done, seconds",
        parse=number,
        default="1",
    ),
)

#: Setting name -> environment variable.
ENV: Final = {option.field: option.envvar for option in RUN_OPTIONS}
SETTINGS: Final = {option.field: option for option in RUN_OPTIONS}
