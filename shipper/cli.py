"""``usage-shipper``: run the shipper, and the operator commands around an outbox.

Every ``run`` option can also come from an environment variable; ``--help`` names it and
the default (the table is :mod:`shipper.options`). A bad setting ends the process at
start-up with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from sqlalchemy.exc import SQLAlchemyError

from outbox.errors import ConfigError, OutboxError
from shipper import commands as operator_commands
from shipper.collector import tune_collector
from shipper.config import ShipperConfig
from shipper.options import DATABASE, DEFAULTS, OPTIONS, PEEK_OPTIONS, build_config, outbox_target
from shipper.peek import peek
from shipper.worker import Shipper
from usage_runtime.logs import configure_logging
from usage_runtime.nats import CREDENTIAL_HINT, NatsRefused
from usage_runtime.options import EXIT_BAD_SETTING, BadValue, Parser, add_options
from usage_runtime.redact import redact_url
from usage_runtime.signals import stop_on_signals

EXIT_CONFIG = EXIT_BAD_SETTING


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="usage-shipper", description="Ship usage events from an outbox to NATS JetStream."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="ship until SIGTERM/SIGINT")
    add_options(run, OPTIONS, DEFAULTS)
    status = commands.add_parser("status", help="pending and dead counts, oldest age, last error")
    add_options(status, [DATABASE], DEFAULTS)
    peek_command = commands.add_parser(
        "peek",
        help="print the usage events stored in the stream (read-only)",
        description="Print subject, headers and payload of the usage events in the stream, "
        "read by sequence: no consumer is created and nothing is acknowledged.",
    )
    add_options(peek_command, PEEK_OPTIONS, DEFAULTS)
    peek_command.add_argument(
        "--last", type=int, default=10, metavar="N", help="show the last N events (default 10)"
    )
    peek_command.add_argument(
        "--follow", action="store_true", help="then keep printing new ones until Ctrl-C"
    )
    migrate_command = commands.add_parser(
        "migrate",
        help="create the outbox tables, or bring them to this version's schema",
        description="Create the outbox (a new SQLite file is made 0600) or upgrade it to "
        "this version's schema with the migrations shipped in the package. Tables your "
        "service created from outbox.metadata are only checked; --stamp hands them over to "
        "these migrations.",
    )
    add_options(migrate_command, [DATABASE], DEFAULTS)
    migrate_command.add_argument(
        "--stamp",
        action="store_true",
        help="tables made by your service that match the schema: record them as current",
    )
    dead = commands.add_parser("dead", help="list, requeue or purge dead rows")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_commands.add_parser("list", help="list dead rows with their reasons")
    add_options(listing, [DATABASE], DEFAULTS)
    listing.add_argument("--limit", type=int, default=100, help="rows shown at most (default 100)")
    requeue = dead_commands.add_parser("requeue", help="make dead rows pending again")
    add_options(requeue, [DATABASE], DEFAULTS)
    requeue.add_argument("ids", nargs="*", type=int, help="row ids (see dead list)")
    requeue.add_argument("--all", action="store_true", help="requeue every dead row")
    purge = dead_commands.add_parser("purge", help="delete dead rows older than a duration")
    add_options(purge, [DATABASE], DEFAULTS)
    purge.add_argument(
        "--older-than",
        required=True,
        type=operator_commands.parse_duration,
        metavar="DURATION",
        help="age by created_at: 7d, 12h, 30m, 45s (a plain number is seconds)",
    )
    purge.add_argument("--dry-run", action="store_true", help="print the count, delete nothing")
    return parser


async def _run(config: ShipperConfig) -> int:
    shipper = Shipper(config)
    tune_collector()  # a daemon's settings: see shipper/collector.py
    expired = asyncio.Event()

    def give_up() -> None:
        expired.set()
        shipper.stop()

    deadline = None
    if config.burst_deadline is not None:
        deadline = asyncio.get_running_loop().call_later(config.burst_deadline, give_up)
    try:
        with stop_on_signals(shipper.stop):
            stats = await shipper.run()
    finally:
        if deadline is not None:
            deadline.cancel()
    if expired.is_set():
        why = f"; last problem: {stats.last_error}" if stats.last_error else ""
        print(
            f"usage-shipper: the burst deadline ({config.burst_deadline:g} s) passed before "
            f"the outbox was drained{why}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _peek(config: ShipperConfig, last: int, follow: bool) -> int:
    stop = asyncio.Event()
    try:
        with stop_on_signals(stop.set):
            await peek(config, last=last, follow=follow, stop=stop, show=_show)
    except NatsRefused as exc:
        raise ConfigError(f"nats refused the connection: {exc} ({CREDENTIAL_HINT})") from exc
    return 0


def _show(text: str) -> None:
    print(text, flush=True)  # --follow into a pipe: each event as it comes


def _summary(config: ShipperConfig) -> str:
    """The start-up line: where from, where to; the full settings are logged at DEBUG."""
    servers = ", ".join(redact_url(server) for server in config.nats_servers)
    nats = f"NATS {servers}"
    if config.consul_host:
        nats = f"NATS from Consul {config.consul_host}:{config.consul_port} (else {servers})"
    mode = "until idle" if config.exit_when_idle else "until SIGTERM"
    return (
        f"outbox {redact_url(config.database_url)} -> {nats}, stream {config.stream}; "
        f"shipping {mode}"
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environment = os.environ if env is None else env
    try:
        if args.command == "run":
            config = build_config(args, environment)
            configure_logging(config.log_format, config.log_level)
            log = logging.getLogger("shipper")
            log.info("starting: %s", _summary(config), extra={"action": "starting"})
            log.debug("starting with %s", config.redacted(), extra={"action": "settings"})
            return asyncio.run(_run(config))
        configure_logging("text", "WARNING")
        if args.command == "peek":
            if args.last < 0:
                raise ConfigError("peek: --last must be 0 or more")
            return asyncio.run(_peek(build_config(args, environment), args.last, args.follow))
        target = outbox_target(args, environment)
        if args.command == "migrate":
            asyncio.run(operator_commands.migrate_outbox(target, stamp=args.stamp))
            return 0
        url = operator_commands.existing_outbox(target)
        if args.command == "status":
            asyncio.run(operator_commands.status(url))
        elif args.dead_command == "list":
            asyncio.run(operator_commands.dead_list(url, args.limit))
        elif args.dead_command == "purge":
            asyncio.run(operator_commands.dead_purge(url, args.older_than, args.dry_run))
        else:
            if not args.ids and not args.all:
                raise ConfigError("dead requeue: give row ids or --all")
            asyncio.run(operator_commands.dead_requeue(url, None if args.all else args.ids))
        return 0
    except (ConfigError, BadValue) as exc:
        print(f"usage-shipper: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OutboxError, SQLAlchemyError, OSError) as exc:
        print(f"usage-shipper: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
