"""``usage-billing``: run the billing consumer, load prices, and read what it billed.

::

    usage-billing run                      migrate, then consume until SIGTERM/SIGINT
    usage-billing run --burst              consume until idle, print the counters, exit
    usage-billing prices set gpt-4 token 0.00003
    usage-billing prices list
    usage-billing report [--json]          per-user totals, balances, unpriced and rejected
    usage-billing report --by product --since 2026-11-01 --format csv
                                           usage (in its units), events, charges per group
    usage-billing rejected [--limit N]     rejected deliveries with their reasons
    usage-billing reprice                  bill unpriced events that have a price now
    usage-billing audit                    check the ledger; exit 1 if anything is off
    usage-billing migrate                  bring the database to the current schema

Every setting can also come from an environment variable; ``--help`` names it. A bad
setting ends the process with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from billing.config import ENV, BillingConfig, parse_setting
from billing.consumer import BillingConsumer
from billing.database import BillingDatabase
from billing.decode import UNIT_TYPES
from billing.engines import DEFAULT_DATABASE_URL, async_url
from billing.errors import BillingConfigError, BillingError
from billing.pricing import PricingError
from billing.report import (
    GROUPINGS,
    breakdown_csv,
    breakdown_json,
    format_breakdown,
    format_table,
)
from outbox.drivers import missing_driver
from usage_runtime.flags import add_flag
from usage_runtime.logs import configure_logging
from usage_runtime.signals import stop_on_signals

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
BURST_ENV = "BILLING_BURST"
IDLE_ENV = "BILLING_IDLE_TIMEOUT"


@dataclass(frozen=True)
class Option:
    """One setting: its flag, the config field (whose env variable is ``ENV[field]``), help."""

    flag: str
    field: str
    help: str

    @property
    def env(self) -> str:
        return ENV[self.field]


DATABASE = Option(
    "--database-url",
    "database_url",
    f"billing database, SQLAlchemy URL or SQLite file path (default {DEFAULT_DATABASE_URL})",
)
RUN_OPTIONS: tuple[Option, ...] = (
    DATABASE,
    Option(
        "--nats-url", "nats_url", "NATS servers, comma-separated (default nats://127.0.0.1:4222)"
    ),
    Option("--nats-user", "nats_user", "NATS user (default none)"),
    Option(
        "--nats-password", "nats_password", "NATS password (prefer the environment; default none)"
    ),
    Option("--nats-token", "nats_token", "NATS token (prefer the environment; default none)"),
    Option("--nats-nkey-seed", "nats_nkey_seed_file", "file holding an NKey seed (default none)"),
    Option("--nats-creds", "nats_creds_file", "NATS .creds file (user JWT + seed; default none)"),
    Option("--tls-ca", "tls_ca_file", "CA file to verify NATS with (default: system CAs)"),
    Option("--tls-cert", "tls_cert_file", "client certificate for NATS (default none)"),
    Option("--tls-key", "tls_key_file", "key of the client certificate (default none)"),
    Option("--stream", "stream", "JetStream stream to read (default billing-stream)"),
    Option(
        "--stream-max-age",
        "stream_max_age",
        "max_age in seconds of a stream billing creates (default 30 days)",
    ),
    Option("--durable", "durable", "durable consumer name (default billing)"),
    Option(
        "--create-stream",
        "create_stream",
        "create the stream when none captures the usage subjects, else wait (default true)",
    ),
    Option("--batch-size", "batch_size", "messages per fetch and per transaction (default 256)"),
    Option(
        "--max-ack-pending", "max_ack_pending", "unacknowledged messages at most (default 2048)"
    ),
    Option(
        "--ack-wait", "ack_wait", "seconds before an unacked message is redelivered (default 30)"
    ),
    Option("--fetch-timeout", "fetch_timeout", "seconds one fetch waits for messages (default 1)"),
    Option(
        "--max-deliveries",
        "max_deliveries",
        "deliveries of a message that cannot be stored before it is parked as rejected (default 5)",
    ),
    Option(
        "--retry-delay",
        "retry_delay",
        "seconds before a message that could not be stored comes back (default 2)",
    ),
    Option("--connect-timeout", "connect_timeout", "seconds to connect to NATS (default 2)"),
    Option("--migrate", "migrate", "run billing's migrations before consuming (default true)"),
    Option("--log-format", "log_format", "text or json (default text)"),
    Option("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR (default INFO)"),
    Option(
        "--metrics-port",
        "metrics_port",
        "serve /metrics, /healthz and /readyz on this port (default off; 0 = any free port)",
    ),
    Option(
        "--metrics-host", "metrics_host", "address the metrics port listens on (default 127.0.0.1)"
    ),
)


_FLAGS = {f.name for f in fields(BillingConfig) if f.type == "bool"}


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        if option.field in _FLAGS:  # yes/no settings are flags, as in usage-shipper
            add_flag(
                parser, option.flag, dest=option.field, help=f"{option.help} [env {option.env}]"
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.field,
            default=None,
            metavar="VALUE",
            help=f"{option.help} [env {option.env}]",
        )


def database_url(text: str) -> str:
    """A SQLAlchemy URL as given, or a plain path taken as an SQLite file."""
    return str(async_url(text)) if "://" in text else f"sqlite+aiosqlite:///{Path(text)}"


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> BillingConfig:
    """Flags win over environment variables, which win over the defaults."""
    values: dict[str, Any] = {}
    for option in RUN_OPTIONS:
        raw = getattr(args, option.field, None)
        source = option.flag
        if raw is None:
            raw, source = env.get(option.env), f"${option.env}"
        if isinstance(raw, bool):  # a flag
            values[option.field] = raw
            continue
        if raw is None or raw.strip() == "":
            continue
        try:
            values[option.field] = parse_setting(option.field, raw)
        except BillingConfigError as exc:
            raise BillingConfigError(f"{source}: bad value {raw!r}") from exc
    if "database_url" in values:
        values["database_url"] = database_url(values["database_url"])
    config = BillingConfig(**values).validate()
    _check_driver(config.database_url)
    return config


def _check_driver(url: str) -> None:
    """A PostgreSQL URL without its driver installed: one line naming the extra."""
    missing = missing_driver(url)
    if missing is not None:
        raise BillingConfigError(missing)


def _burst_settings(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[bool, float]:
    burst = args.burst
    if burst is None:
        raw = env.get(BURST_ENV, "").strip().lower()
        if raw not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
            raise BillingConfigError(f"${BURST_ENV}: bad value {raw!r}, expected true/false")
        burst = raw in ("1", "true", "yes", "on")
    idle = args.idle_timeout
    if idle is None:
        raw = env.get(IDLE_ENV, "").strip() or "1"
        try:
            idle = float(raw)
        except ValueError as exc:
            raise BillingConfigError(f"${IDLE_ENV}: bad value {raw!r}") from exc
    if not idle > 0:
        raise BillingConfigError("idle timeout must be positive")
    return bool(burst), float(idle)


def _database(args: argparse.Namespace, env: Mapping[str, str], *, must_exist: bool) -> str:
    raw = args.database_url or env.get(DATABASE.env) or DEFAULT_DATABASE_URL
    url = database_url(raw)
    _check_driver(url)
    parsed = make_url(url)
    if must_exist and parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise BillingConfigError(f"no billing database at {path}")
    return url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usage-billing",
        description="Bill usage events from NATS JetStream exactly once, into a ledger.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="migrate, then consume until SIGTERM/SIGINT")
    _add_options(run, RUN_OPTIONS)
    run.add_argument(
        "--burst",
        action="store_true",
        default=None,
        help="consume until no message arrives for --idle-timeout seconds, print the "
        f"counters, exit [env {BURST_ENV}]",
    )
    run.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"with --burst: how long a quiet stream means done (default 1) [env {IDLE_ENV}]",
    )

    migrate = commands.add_parser("migrate", help="bring the billing database to the schema")
    _add_options(migrate, [DATABASE])

    report = commands.add_parser("report", help="per-user totals, balances and counts")
    _add_options(report, [DATABASE])
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument(
        "--by",
        choices=GROUPINGS,
        default=None,
        help="only the breakdown: usage in its units, events and charges per user, product "
        "or day (default: the per-user totals and balances, then the breakdown by product)",
    )
    report.add_argument(
        "--since", default=None, metavar="TIME", help="usage from this date or ISO time (UTC)"
    )
    report.add_argument(
        "--until", default=None, metavar="TIME", help="usage before this date or ISO time (UTC)"
    )
    report.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default=None,
        help="the breakdown as a table (default), CSV or JSON",
    )

    prices = commands.add_parser("prices", help="set or list unit prices")
    price_commands = prices.add_subparsers(dest="prices_command", required=True)
    price_set = price_commands.add_parser("set", help="set the price of one unit of a product")
    _add_options(price_set, [DATABASE])
    price_set.add_argument("product_id", help="the product (model name), exactly as sent")
    price_set.add_argument(
        "unit_type",
        choices=sorted(UNIT_TYPES),
        metavar="unit_type",
        help="token or request (this project's events), or another unit the platform's "
        "producers bill in: " + ", ".join(sorted(UNIT_TYPES - {"token", "request"})),
    )
    price_set.add_argument("price", help="price per unit, a decimal with at most 12 places")
    price_list = price_commands.add_parser("list", help="list the prices")
    _add_options(price_list, [DATABASE])

    rejected = commands.add_parser("rejected", help="rejected deliveries with their reasons")
    _add_options(rejected, [DATABASE])
    rejected.add_argument("--limit", type=int, default=50, help="rows shown at most (default 50)")

    reprice = commands.add_parser("reprice", help="bill unpriced events that now have a price")
    _add_options(reprice, [DATABASE])

    audit = commands.add_parser("audit", help="check the ledger's invariants (exit 1 if not)")
    _add_options(audit, [DATABASE])
    return parser


# -- commands ---------------------------------------------------------------------------------


async def _run(config: BillingConfig, *, burst: bool, idle_timeout: float) -> int:
    consumer = BillingConsumer(config)
    stop = asyncio.Event()
    with stop_on_signals(stop.set):
        if burst:
            # On a terminal, say every few seconds how far it got (to stderr: stdout keeps
            # the one line of counters at the end).
            progress = _progress_printer(consumer) if sys.stderr.isatty() else None
            async with consumer:
                await consumer.drain(idle_timeout, stop, progress=progress)
            for name, value in consumer.stats.as_dict().items():
                print(f"{name.replace('_', ' '):<13} {value:>9}")
        else:
            await consumer.run(stop)
    return EXIT_OK


def _progress_printer(consumer: BillingConsumer) -> Callable[[], Awaitable[None]]:
    started, before = time.monotonic(), 0

    async def show() -> None:
        nonlocal started, before
        stats, now = consumer.stats, time.monotonic()
        rate = (stats.received - before) / max(now - started, 1e-9)
        started, before = now, stats.received
        pending = await consumer.pending()
        left = f", {pending:,} left in the stream" if pending is not None else ""
        print(
            f"billed {stats.billed:,}, unpriced {stats.unpriced:,}, duplicates "
            f"{stats.duplicates:,}, rejected {stats.rejected:,} ({rate:,.0f} messages/s{left})",
            file=sys.stderr,
            flush=True,
        )

    return show


async def _with_database(url: str, action: Callable[[BillingDatabase], Awaitable[int]]) -> int:
    async with BillingDatabase(url) as db:
        return await action(db)


async def _report(db: BillingDatabase, args: argparse.Namespace) -> int:
    breakdown_only = args.by is not None or args.format in ("csv", "json")
    if args.json and not breakdown_only:
        print(json.dumps((await db.report()).as_dict(), indent=2))
        return EXIT_OK
    by = args.by or "product"
    since, until = _report_time("--since", args.since), _report_time("--until", args.until)
    rows = await db.breakdown(by, since=since, until=until)
    if args.format == "csv":
        print(breakdown_csv(rows, by), end="")
    elif args.format == "json" or args.json:
        print(breakdown_json(rows, by, args.since, args.until))
    else:
        if not breakdown_only:
            print(format_table(await db.report()))
            print()
        window = " ".join(
            part
            for part in (
                f"from {args.since}" if since else "",
                f"until {args.until}" if until else "",
            )
            if part
        )
        print(f"by {by}" + (f", usage {window}" if window else "") + ":")
        print(format_breakdown(rows, by))
    return EXIT_OK


def _report_time(flag: str, text: str | None) -> datetime | None:
    """A date (midnight UTC) or an ISO 8601 time (UTC when it has no offset)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BillingConfigError(
            f"{flag}: {text!r} is not a date (2026-11-01) or an ISO 8601 time"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _price_set(db: BillingDatabase, product_id: str, unit_type: str, price: str) -> int:
    stored = await db.set_price(product_id, unit_type, price)
    print(f"{product_id} per {unit_type}: {stored:f}")
    return EXIT_OK


async def _price_list(db: BillingDatabase) -> int:
    rows = await db.prices()
    width = max((len(p.product_id) for p in rows), default=7)
    print(f"{'product':{width}}  {'unit':7}  price")
    for p in rows:
        print(f"{p.product_id:{width}}  {p.unit_type:7}  {p.unit_price:f}")
    return EXIT_OK


async def _rejected(db: BillingDatabase, limit: int) -> int:
    rows = await db.rejected(limit=limit)
    for row in rows:
        preview = row.payload[:80].decode("utf-8", "replace")
        print(f"#{row.id} {row.stream} seq {row.stream_seq} {row.subject}")
        print(f"    reason:  {row.reason}")
        print(f"    payload: {preview!r}{' ...' if len(row.payload) > 80 else ''}")
    print(f"({len(rows)} rejected deliveries shown)")
    return EXIT_OK


async def _reprice(db: BillingDatabase) -> int:
    print(f"billed {await db.reprice()} previously unpriced event(s)")
    return EXIT_OK


async def _audit(db: BillingDatabase) -> int:
    audit = await db.audit()
    print(f"{audit.records} records, {audit.transactions} transactions, {audit.wallets} wallets")
    for problem in audit.problems:
        print(f"PROBLEM: {problem}")
    print("ok" if audit.ok else f"{len(audit.problems)} problem(s)")
    return EXIT_OK if audit.ok else EXIT_FAILED


async def _migrate(db: BillingDatabase) -> int:
    print("billing schema is current")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environment = os.environ if env is None else env
    try:
        if args.command == "run":
            config = build_config(args, environment)
            configure_logging(config.log_format, config.log_level)
            log = logging.getLogger("billing")
            shown = config.redacted()
            log.info(
                "starting: NATS %s, stream %s, durable %s -> billing database %s",
                shown["nats_url"],
                config.stream,
                config.durable,
                shown["database_url"],
                extra={"action": "starting"},
            )
            log.debug("starting with %s", shown, extra={"action": "settings"})
            burst, idle_timeout = _burst_settings(args, environment)
            return asyncio.run(_run(config, burst=burst, idle_timeout=idle_timeout))
        configure_logging("text", "WARNING")
        creates = args.command == "migrate" or (
            args.command == "prices" and args.prices_command == "set"
        )
        url = _database(args, environment, must_exist=not creates)
        action: Callable[[BillingDatabase], Awaitable[int]]
        if args.command == "report":
            action = lambda db: _report(db, args)  # noqa: E731
        elif args.command == "prices" and args.prices_command == "set":
            action = lambda db: _price_set(db, args.product_id, args.unit_type, args.price)  # noqa: E731
        elif args.command == "prices":
            action = _price_list
        elif args.command == "rejected":
            action = lambda db: _rejected(db, args.limit)  # noqa: E731
        elif args.command == "reprice":
            action = _reprice
        elif args.command == "audit":
            action = _audit
        else:
            action = _migrate
        return asyncio.run(_with_database(url, action))
    except BillingConfigError as exc:
        print(f"usage-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (PricingError, BillingError, SQLAlchemyError, OSError, nats.errors.Error) as exc:
        print(f"usage-billing: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
