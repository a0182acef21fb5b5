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

Every setting can also come from an environment variable; ``--help`` names it and the
default (the table is :mod:`billing.options`). A bad setting ends the process with one
line on stderr and exit code 2.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from billing.database import BillingDatabase
from billing.decode import UNIT_TYPES
from billing.engines import DEFAULT_DATABASE_URL, async_url
from billing.errors import BillingConfigError, BillingError
from billing.options import BURST_OPTIONS, DATABASE, RUN_OPTIONS
from billing.pricing import PricingError
from billing.report import (
    GROUPINGS,
    breakdown_csv,
    breakdown_json,
    format_breakdown,
    format_table,
)
from outbox.drivers import missing_driver
from usage_runtime.logs import configure_logging
from usage_runtime.options import (
    EXIT_BAD_SETTING,
    BadValue,
    Option,
    Parser,
    add_options,
    defaults_of,
    resolve,
)
from usage_runtime.signals import stop_on_signals

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = EXIT_BAD_SETTING
#: What ``--help`` shows as the defaults: the config's own.
DEFAULTS = defaults_of(BillingConfig)


def database_url(text: str) -> str:
    """A SQLAlchemy URL as given, or a plain path taken as an SQLite file."""
    return str(async_url(text)) if "://" in text else f"sqlite+aiosqlite:///{Path(text)}"


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> BillingConfig:
    """Flags win over environment variables, which win over the defaults."""
    values = _resolve(RUN_OPTIONS, args, env)
    if "database_url" in values:
        values["database_url"] = database_url(values["database_url"])
    config = BillingConfig(**values).validate()
    _check_driver(config.database_url)
    return config


def _resolve(
    options: Sequence[Option], args: argparse.Namespace, env: Mapping[str, str]
) -> dict[str, Any]:
    try:
        return resolve(options, args, env)
    except BadValue as exc:
        raise BillingConfigError(str(exc)) from exc


def _check_driver(url: str) -> None:
    """A PostgreSQL URL without its driver installed: one line naming the extra."""
    missing = missing_driver(url)
    if missing is not None:
        raise BillingConfigError(missing)


def _burst_settings(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[bool, float]:
    values = _resolve(BURST_OPTIONS, args, env)
    idle = float(values.get("idle_timeout", 1.0))
    if not idle > 0:
        raise BillingConfigError("idle timeout must be positive")
    return bool(values.get("burst", False)), idle


def _database(args: argparse.Namespace, env: Mapping[str, str], *, must_exist: bool) -> str:
    raw = _resolve([DATABASE], args, env).get("database_url") or DEFAULT_DATABASE_URL
    url = database_url(raw)
    _check_driver(url)
    parsed = make_url(url)
    if must_exist and parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise BillingConfigError(f"no billing database at {path}")
    return url


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="usage-billing",
        description="Bill usage events from NATS JetStream exactly once, into a ledger.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="migrate, then consume until SIGTERM/SIGINT")
    add_options(run, RUN_OPTIONS + BURST_OPTIONS, DEFAULTS)

    migrate = commands.add_parser("migrate", help="bring the billing database to the schema")
    add_options(migrate, [DATABASE], DEFAULTS)

    report = commands.add_parser("report", help="per-user totals, balances and counts")
    add_options(report, [DATABASE], DEFAULTS)
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
    add_options(price_set, [DATABASE], DEFAULTS)
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
    add_options(price_list, [DATABASE], DEFAULTS)

    rejected = commands.add_parser("rejected", help="rejected deliveries with their reasons")
    add_options(rejected, [DATABASE], DEFAULTS)
    rejected.add_argument("--limit", type=int, default=50, help="rows shown at most (default 50)")

    reprice = commands.add_parser("reprice", help="bill unpriced events that now have a price")
    add_options(reprice, [DATABASE], DEFAULTS)

    audit = commands.add_parser("audit", help="check the ledger's invariants (exit 1 if not)")
    add_options(audit, [DATABASE], DEFAULTS)
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
            burst, idle_timeout = _burst_settings(args, environment)
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
