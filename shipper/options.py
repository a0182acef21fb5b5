"""The settings of ``usage-shipper``: one option table, and the config it builds.

Every setting of :class:`~shipper.config.ShipperConfig` is an :class:`Option` here, with
its flag and its environment variable; ``--help`` shows both and the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from outbox.errors import ConfigError
from outbox.service import DEFAULT_PATH, URL_ENV, resolve_url
from outbox.stream_spec import STREAM_ENV, STREAM_MAX_AGE_ENV
from shipper.config import ShipperConfig
from usage_runtime.options import (
    BadValue,
    Option,
    boolean,
    comma_list,
    defaults_of,
    number,
    resolve,
    whole_number,
)
from usage_runtime.shared_options import NATS_AUTH_OPTIONS, process_options

DATABASE = Option(
    "--database-url",
    "database_url",
    URL_ENV,
    "outbox database: SQLAlchemy URL or SQLite file path",
    parse=resolve_url,
    default=f"./{DEFAULT_PATH}",
)

OPTIONS: tuple[Option, ...] = (
    DATABASE,
    Option(
        "--nats-url",
        "nats_servers",
        "NATS_URL",
        "NATS servers, comma-separated, or NATS_HOST + NATS_PORT",
        parse=comma_list,
    ),
    *NATS_AUTH_OPTIONS,
    Option(
        "--connect-timeout",
        "connect_timeout",
        "NATS_CONNECT_TIMEOUT",
        "seconds to wait for a NATS connection",
        parse=number,
    ),
    Option(
        "--max-reconnect-attempts",
        "max_reconnect_attempts",
        "NATS_MAX_RECONNECT_ATTEMPTS",
        "reconnects per server before a connection is given up and a new one built",
        parse=whole_number,
        default="10; negative = for ever",
    ),
    Option(
        "--consul-host",
        "consul_host",
        "CONSUL_HOST",
        "Consul agent host",
        default="unset: no discovery, use --nats-url",
    ),
    Option("--consul-port", "consul_port", "CONSUL_PORT", "Consul port", parse=whole_number),
    Option("--consul-scheme", "consul_scheme", "CONSUL_SCHEME", "http or https"),
    Option(
        "--consul-ca",
        "consul_ca_file",
        "CONSUL_CACERT",
        "CA file to verify an https Consul with",
        default="system CAs",
    ),
    Option(
        "--consul-timeout",
        "consul_timeout",
        "CONSUL_TIMEOUT",
        "seconds to wait for Consul's answer",
        parse=number,
    ),
    Option("--consul-token", "consul_token", "CONSUL_HTTP_TOKEN", "Consul ACL token", secret=True),
    Option(
        "--consul-service", "consul_service", "CONSUL_NATS_SERVICE", "Consul service name of NATS"
    ),
    Option("--stream", "stream", STREAM_ENV, "JetStream stream name"),
    Option(
        "--create-stream",
        "create_stream",
        "USAGE_CREATE_STREAM",
        "create the stream when none captures the subjects",
        parse=boolean,
    ),
    Option(
        "--duplicate-window",
        "duplicate_window",
        "USAGE_DUPLICATE_WINDOW",
        "de-duplication window of a created stream, seconds",
        parse=number,
    ),
    Option(
        "--stream-max-age",
        "stream_max_age",
        STREAM_MAX_AGE_ENV,
        "max_age in seconds of a created stream, and the shortest of an adopted one that is "
        "not warned about",
        parse=number,
        default="2592000, 30 days",
    ),
    Option(
        "--replicas",
        "replicas",
        "USAGE_STREAM_REPLICAS",
        "replicas of a created stream",
        parse=whole_number,
    ),
    Option(
        "--batch-size",
        "batch_size",
        "SHIPPER_BATCH_SIZE",
        "rows claimed per batch",
        parse=whole_number,
    ),
    Option(
        "--max-in-flight",
        "max_in_flight",
        "SHIPPER_MAX_IN_FLIGHT",
        "unacknowledged publishes at most",
        parse=whole_number,
    ),
    Option(
        "--batch-publish",
        "batch_publish",
        "SHIPPER_BATCH_PUBLISH",
        "fast-ingest batches where nats-server 2.14+ and the stream allow them",
        parse=boolean,
    ),
    Option(
        "--poll-interval",
        "poll_interval",
        "SHIPPER_POLL_INTERVAL",
        "seconds between polls of an idle outbox, a read",
        parse=number,
    ),
    Option(
        "--publish-timeout",
        "publish_timeout",
        "SHIPPER_PUBLISH_TIMEOUT",
        "seconds to wait for a PubAck",
        parse=number,
    ),
    Option(
        "--max-attempts",
        "max_attempts",
        "SHIPPER_MAX_ATTEMPTS",
        "attempts before a row goes to dead",
        parse=whole_number,
    ),
    Option(
        "--retry-base",
        "retry_base",
        "SHIPPER_RETRY_BASE",
        "first per-row retry delay, seconds",
        parse=number,
    ),
    Option(
        "--retry-cap",
        "retry_cap",
        "SHIPPER_RETRY_CAP",
        "longest per-row retry delay, seconds",
        parse=number,
    ),
    Option(
        "--backoff-cap",
        "backoff_cap",
        "SHIPPER_BACKOFF_CAP",
        "longest pause while NATS is unreachable, seconds",
        parse=number,
    ),
    Option(
        "--parse-payloads",
        "parse_payloads",
        "SHIPPER_PARSE_PAYLOADS",
        "parse every payload as JSON before publishing, not just its envelope",
        parse=boolean,
    ),
    Option(
        "--lease-ttl",
        "lease_ttl",
        "SHIPPER_LEASE_TTL",
        "seconds a dead shipper's lease blocks a successor",
        parse=number,
    ),
    Option(
        "--shutdown-timeout",
        "shutdown_timeout",
        "SHIPPER_SHUTDOWN_TIMEOUT",
        "seconds to wait for in-flight acks when stopping",
        parse=number,
    ),
    Option(
        "--exit-when-idle",
        "exit_when_idle",
        "SHIPPER_EXIT_WHEN_IDLE",
        "drain what is due, then exit (burst mode)",
        parse=boolean,
        default="false: run until SIGTERM",
    ),
    Option(
        "--burst-deadline",
        "burst_deadline",
        "SHIPPER_BURST_DEADLINE",
        "with --exit-when-idle: seconds to drain the outbox in; past them the run stops and "
        "exits 1",
        parse=number,
        default="none: wait out any outage",
    ),
    Option(
        "--keep-sent-hours",
        "keep_sent_hours",
        "SHIPPER_KEEP_SENT_HOURS",
        "keep acknowledged rows this many hours as 'sent' for audit",
        parse=number,
        default="0: delete at once",
    ),
    Option(
        "--cleanup-batch",
        "cleanup_batch",
        "SHIPPER_CLEANUP_BATCH",
        "expired sent rows deleted per transaction",
        parse=whole_number,
    ),
    Option(
        "--vacuum-pages",
        "vacuum_pages",
        "SHIPPER_VACUUM_PAGES",
        "free pages given back per transaction when the file shrinks",
        parse=whole_number,
        default="64 while idle, 0 = off with --exit-when-idle, whose exit would wait for it",
    ),
    Option(
        "--vacuum-min-free-pages",
        "vacuum_min_free_pages",
        "SHIPPER_VACUUM_MIN_FREE_PAGES",
        "free pages that start a shrink of the outbox file",
        parse=whole_number,
    ),
    *process_options("SHIPPER"),
)

#: What ``--help`` shows as the defaults: the config's own.
DEFAULTS = defaults_of(ShipperConfig)

#: The run options ``peek`` takes: where NATS is, how to log in, which stream.
PEEK_OPTIONS: tuple[Option, ...] = tuple(
    option
    for option in OPTIONS
    if option.field in ("connect_timeout", "stream")
    or option.field.startswith(("nats_", "tls_", "consul_"))
)


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> ShipperConfig:
    """Flags win over environment variables, which win over the defaults."""
    if "NATS_URL" not in env and env.get("NATS_HOST"):
        env = {**env, "NATS_URL": f"nats://{env['NATS_HOST']}:{env.get('NATS_PORT', '4222')}"}
    try:
        values: dict[str, Any] = resolve(OPTIONS, args, env)
        config = ShipperConfig(**values)
    except BadValue as exc:
        raise ConfigError(str(exc)) from exc
    return config.validate()


def outbox_target(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The outbox an operator command names: ``--database-url``, else its variable, else
    the default file."""
    given: str | None = resolve([DATABASE], args, env).get("database_url")
    return given or resolve_url(DEFAULT_PATH)
