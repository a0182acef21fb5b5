"""``usage-shipper``: run the shipper, and the operator commands around an outbox.

Every ``run`` option can also come from an environment variable; ``--help`` names it.
A bad setting ends the process at start-up with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from outbox import migrate, store
from outbox.drivers import missing_driver
from outbox.errors import ConfigError, OutboxError, OutboxSchemaError
from outbox.service import DEFAULT_PATH, resolve_url
from outbox.sqlite import create_outbox_engine, sqlite_file
from outbox.stream_spec import DEFAULT_STREAM, STREAM_ENV, STREAM_MAX_AGE_ENV
from shipper.config import ShipperConfig
from shipper.lease import LEASE_NAME
from shipper.peek import peek
from shipper.worker import Shipper
from usage_runtime.flags import add_flag, parse_bool
from usage_runtime.logs import configure_logging
from usage_runtime.nats import CREDENTIAL_HINT, NatsRefused
from usage_runtime.redact import redact_url
from usage_runtime.signals import stop_on_signals

EXIT_CONFIG = 2


def _bool(text: str) -> bool:
    return parse_bool(text)


def _servers(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, its config field and parser."""

    flag: str
    env: str
    field: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        "--database-url",
        "USAGE_OUTBOX_URL",
        "database_url",
        resolve_url,
        "outbox database: SQLAlchemy URL or SQLite file path (default ./usage-outbox.db)",
    ),
    Option(
        "--nats-url",
        "NATS_URL",
        "nats_servers",
        _servers,
        "NATS servers, comma-separated (default nats://127.0.0.1:4222; "
        "NATS_HOST + NATS_PORT also work)",
    ),
    Option("--nats-user", "NATS_USER", "nats_user", str, "NATS user (default none)"),
    Option(
        "--nats-password",
        "NATS_PASSWORD",
        "nats_password",
        str,
        "NATS password (default none)",
        secret=True,
    ),
    Option(
        "--nats-token", "NATS_TOKEN", "nats_token", str, "NATS token (default none)", secret=True
    ),
    Option(
        "--nats-nkey-seed",
        "NATS_NKEY_SEED_FILE",
        "nats_nkey_seed_file",
        str,
        "file holding an NKey seed (default none)",
    ),
    Option(
        "--nats-creds",
        "NATS_CREDS_FILE",
        "nats_creds_file",
        str,
        "NATS .creds file (JWT + seed; default none)",
    ),
    Option(
        "--connect-timeout",
        "NATS_CONNECT_TIMEOUT",
        "connect_timeout",
        float,
        "seconds to wait for a NATS connection (default 2)",
    ),
    Option(
        "--max-reconnect-attempts",
        "NATS_MAX_RECONNECT_ATTEMPTS",
        "max_reconnect_attempts",
        int,
        "reconnects per server before a connection is given up and a new one built "
        "(default 10; negative = for ever)",
    ),
    Option(
        "--tls-ca",
        "NATS_TLS_CA_FILE",
        "tls_ca_file",
        str,
        "CA file to verify NATS with (default: the system's CAs)",
    ),
    Option(
        "--tls-cert",
        "NATS_TLS_CERT_FILE",
        "tls_cert_file",
        str,
        "client certificate (default none)",
    ),
    Option(
        "--tls-key",
        "NATS_TLS_KEY_FILE",
        "tls_key_file",
        str,
        "client certificate key (default none)",
    ),
    Option(
        "--consul-host",
        "CONSUL_HOST",
        "consul_host",
        str,
        "Consul agent host (default unset: no discovery, use --nats-url)",
    ),
    Option("--consul-port", "CONSUL_PORT", "consul_port", int, "Consul port (default 8500)"),
    Option(
        "--consul-scheme", "CONSUL_SCHEME", "consul_scheme", str, "http or https (default http)"
    ),
    Option(
        "--consul-ca",
        "CONSUL_CACERT",
        "consul_ca_file",
        str,
        "CA file to verify an https Consul with (default: the system's CAs)",
    ),
    Option(
        "--consul-timeout",
        "CONSUL_TIMEOUT",
        "consul_timeout",
        float,
        "seconds to wait for Consul's answer (default 2)",
    ),
    Option(
        "--consul-token",
        "CONSUL_HTTP_TOKEN",
        "consul_token",
        str,
        "Consul ACL token (default none)",
        secret=True,
    ),
    Option(
        "--consul-service",
        "CONSUL_NATS_SERVICE",
        "consul_service",
        str,
        "Consul service name of NATS (default nats)",
    ),
    Option(
        "--stream", STREAM_ENV, "stream", str, f"JetStream stream name (default {DEFAULT_STREAM})"
    ),
    Option(
        "--create-stream",
        "USAGE_CREATE_STREAM",
        "create_stream",
        _bool,
        "create the stream when none captures the subjects (default true)",
    ),
    Option(
        "--duplicate-window",
        "USAGE_DUPLICATE_WINDOW",
        "duplicate_window",
        float,
        "de-duplication window of a created stream, seconds (default 600)",
    ),
    Option(
        "--stream-max-age",
        STREAM_MAX_AGE_ENV,
        "stream_max_age",
        float,
        "max_age in seconds of a created stream, and the shortest of an adopted one that is "
        "not warned about (default 2592000, 30 days)",
    ),
    Option(
        "--replicas",
        "USAGE_STREAM_REPLICAS",
        "replicas",
        int,
        "replicas of a created stream (default 1)",
    ),
    Option(
        "--batch-size",
        "SHIPPER_BATCH_SIZE",
        "batch_size",
        int,
        "rows claimed per batch (default 1000)",
    ),
    Option(
        "--max-in-flight",
        "SHIPPER_MAX_IN_FLIGHT",
        "max_in_flight",
        int,
        "unacknowledged publishes at most (default 4000)",
    ),
    Option(
        "--batch-publish",
        "SHIPPER_BATCH_PUBLISH",
        "batch_publish",
        _bool,
        "fast-ingest batches where nats-server 2.14+ and the stream allow them (default true)",
    ),
    Option(
        "--poll-interval",
        "SHIPPER_POLL_INTERVAL",
        "poll_interval",
        float,
        "seconds between polls of an idle outbox, a read (default 0.01)",
    ),
    Option(
        "--publish-timeout",
        "SHIPPER_PUBLISH_TIMEOUT",
        "publish_timeout",
        float,
        "seconds to wait for a PubAck (default 5)",
    ),
    Option(
        "--max-attempts",
        "SHIPPER_MAX_ATTEMPTS",
        "max_attempts",
        int,
        "attempts before a row goes to dead (default 8)",
    ),
    Option(
        "--retry-base",
        "SHIPPER_RETRY_BASE",
        "retry_base",
        float,
        "first per-row retry delay, seconds (default 1)",
    ),
    Option(
        "--retry-cap",
        "SHIPPER_RETRY_CAP",
        "retry_cap",
        float,
        "longest per-row retry delay, seconds (default 300)",
    ),
    Option(
        "--backoff-cap",
        "SHIPPER_BACKOFF_CAP",
        "backoff_cap",
        float,
        "longest pause while NATS is unreachable, seconds (default 5)",
    ),
    Option(
        "--parse-payloads",
        "SHIPPER_PARSE_PAYLOADS",
        "parse_payloads",
        _bool,
        "parse every payload as JSON before publishing, not just its envelope (default off)",
    ),
    Option(
        "--lease-ttl",
        "SHIPPER_LEASE_TTL",
        "lease_ttl",
        float,
        "seconds a dead shipper's lease blocks a successor (default 15)",
    ),
    Option(
        "--shutdown-timeout",
        "SHIPPER_SHUTDOWN_TIMEOUT",
        "shutdown_timeout",
        float,
        "seconds to wait for in-flight acks when stopping (default 10)",
    ),
    Option(
        "--exit-when-idle",
        "SHIPPER_EXIT_WHEN_IDLE",
        "exit_when_idle",
        _bool,
        "drain what is due, then exit (burst mode; default off: run until SIGTERM)",
    ),
    Option(
        "--burst-deadline",
        "SHIPPER_BURST_DEADLINE",
        "burst_deadline",
        float,
        "with --exit-when-idle: seconds to drain the outbox in; past them the run stops and "
        "exits 1 (default none: wait out any outage)",
    ),
    Option(
        "--keep-sent-hours",
        "SHIPPER_KEEP_SENT_HOURS",
        "keep_sent_hours",
        float,
        "keep acknowledged rows this many hours as 'sent' for audit (default 0: delete at once)",
    ),
    Option(
        "--cleanup-batch",
        "SHIPPER_CLEANUP_BATCH",
        "cleanup_batch",
        int,
        "expired sent rows deleted per transaction (default 500)",
    ),
    Option(
        "--vacuum-pages",
        "SHIPPER_VACUUM_PAGES",
        "vacuum_pages",
        int,
        "free pages given back per transaction when the file shrinks (default 64; 0 = off)",
    ),
    Option(
        "--vacuum-min-free-pages",
        "SHIPPER_VACUUM_MIN_FREE_PAGES",
        "vacuum_min_free_pages",
        int,
        "free pages that start a shrink of the outbox file (default 1024)",
    ),
    Option("--log-format", "SHIPPER_LOG_FORMAT", "log_format", str, "text or json (default text)"),
    Option(
        "--log-level",
        "SHIPPER_LOG_LEVEL",
        "log_level",
        str,
        "DEBUG, INFO, WARNING, ERROR (default INFO)",
    ),
    Option(
        "--metrics-port",
        "SHIPPER_METRICS_PORT",
        "metrics_port",
        int,
        "serve /metrics, /healthz and /readyz on this port (default off; 0 = any free port)",
    ),
    Option(
        "--metrics-host",
        "SHIPPER_METRICS_HOST",
        "metrics_host",
        str,
        "address the metrics port listens on (default 127.0.0.1)",
    ),
)


#: The run options ``peek`` takes: where NATS is, how to log in, which stream.
_PEEK_FIELDS = frozenset(
    {
        "nats_servers",
        "nats_user",
        "nats_password",
        "nats_token",
        "nats_nkey_seed_file",
        "nats_creds_file",
        "connect_timeout",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "consul_host",
        "consul_port",
        "consul_scheme",
        "consul_ca_file",
        "consul_timeout",
        "consul_token",
        "consul_service",
        "stream",
    }
)


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        if option.parse is _bool:
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


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> ShipperConfig:
    """Flags win over environment variables, which win over the defaults."""
    values: dict[str, Any] = {}
    if "NATS_URL" not in env and env.get("NATS_HOST"):
        values["nats_servers"] = (f"nats://{env['NATS_HOST']}:{env.get('NATS_PORT', '4222')}",)
    for option in OPTIONS:
        raw = getattr(args, option.field, None)
        if raw is None:
            raw = env.get(option.env)
        if raw is None:
            continue
        if isinstance(raw, bool):  # a flag
            values[option.field] = raw
            continue
        try:
            values[option.field] = option.parse(raw)
        except ValueError as exc:
            shown = "***" if option.secret else raw
            raise ConfigError(f"{option.flag} / {option.env}: bad value {shown!r}: {exc}") from exc
    try:
        config = ShipperConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    return config.validate()


def _outbox_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The outbox an operator command reads; it must exist (these commands create nothing)."""
    url = resolve_url(args.database_url or env.get("USAGE_OUTBOX_URL") or DEFAULT_PATH)
    parsed = make_url(url)
    missing = missing_driver(parsed)
    if missing is not None:
        raise ConfigError(missing)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise ConfigError(
            f"no outbox database at {Path(parsed.database or '').resolve()} (these commands "
            "create nothing; check --database-url / USAGE_OUTBOX_URL)"
        )
    return url


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or plain seconds, as seconds."""
    cleaned = text.strip().lower()
    unit = _DURATION_UNITS.get(cleaned[-1:]) if cleaned else None
    number = cleaned[:-1] if unit is not None else cleaned
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad duration {text!r}: expected e.g. 7d, 12h, 30m"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: must be 0 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (``usage-shipper: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"usage-shipper: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="usage-shipper", description="Ship usage events from an outbox to NATS JetStream."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="ship until SIGTERM/SIGINT")
    _add_options(run, OPTIONS)
    database_only = [o for o in OPTIONS if o.field == "database_url"]
    status = commands.add_parser("status", help="pending and dead counts, oldest age, last error")
    _add_options(status, database_only)
    peek_command = commands.add_parser(
        "peek",
        help="print the usage events stored in the stream (read-only)",
        description="Print subject, headers and payload of the usage events in the stream, "
        "read by sequence: no consumer is created and nothing is acknowledged.",
    )
    _add_options(peek_command, [o for o in OPTIONS if o.field in _PEEK_FIELDS])
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
    _add_options(migrate_command, database_only)
    migrate_command.add_argument(
        "--stamp",
        action="store_true",
        help="tables made by your service that match the schema: record them as current",
    )
    dead = commands.add_parser("dead", help="list, requeue or purge dead rows")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_commands.add_parser("list", help="list dead rows with their reasons")
    _add_options(listing, database_only)
    listing.add_argument("--limit", type=int, default=100, help="rows shown at most (default 100)")
    requeue = dead_commands.add_parser("requeue", help="make dead rows pending again")
    _add_options(requeue, database_only)
    requeue.add_argument("ids", nargs="*", type=int, help="row ids (see dead list)")
    requeue.add_argument("--all", action="store_true", help="requeue every dead row")
    purge = dead_commands.add_parser("purge", help="delete dead rows older than a duration")
    _add_options(purge, database_only)
    purge.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="DURATION",
        help="age by created_at: 7d, 12h, 30m, 45s (a plain number is seconds)",
    )
    purge.add_argument("--dry-run", action="store_true", help="print the count, delete nothing")
    return parser


async def _run(config: ShipperConfig) -> int:
    shipper = Shipper(config)
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


async def _with_store(url: str, action: Callable[[Any], Any]) -> None:
    engine = create_outbox_engine(url)
    try:
        async with engine.begin() as conn:
            await action(conn)
    finally:
        await engine.dispose()


async def _reading_store(url: str, action: Callable[[Any], Any]) -> None:
    """Run a read-only ``action``: on an SQLite file, without taking the write lock and
    without writing anything, so ``status`` and ``dead list`` work on a file or mount
    this user cannot write. A WAL file whose ``-shm`` cannot be created (a read-only
    directory) is read as an immutable snapshot: nobody can be writing it there."""
    path = sqlite_file(url)
    if path is None:
        await _with_store(url, action)
        return
    base = f"sqlite+aiosqlite:///file:{quote(path)}?mode=ro&uri=true"
    for attempt in (base, base + "&immutable=1"):
        engine = create_async_engine(attempt, connect_args={"timeout": 30})
        try:
            async with engine.connect() as conn:
                await action(conn)
            return
        except OperationalError as exc:
            if attempt != base or "readonly" not in str(exc.orig):
                raise
        finally:
            await engine.dispose()


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


def _lease_text(holder: tuple[str, float] | None) -> str:
    """Who holds the outbox lease and until when, for ``status``."""
    if holder is None:
        return "free (no shipper running)"
    owner, until = holder
    moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
    left = until - time.time()
    if left < 0:
        return f"{owner}, expired at {moment} ({-left:.0f} s ago: that shipper is gone)"
    return f"held by {owner} until {moment} (in {left:.0f} s unless renewed)"


async def _status(url: str) -> None:
    async def show(conn: Any) -> None:
        current = await store.status(conn)
        age = (
            "-"
            if current.oldest_pending_at is None
            else (f"{time.time() - current.oldest_pending_at:.1f} s")
        )
        print(f"pending             {current.pending}")
        print(f"oldest pending age  {age}")
        print(f"dead                {current.dead}")
        if current.sent:
            print(f"sent (kept)         {current.sent}")
        print(f"last error          {current.last_error or '-'}")
        print(f"lease               {_lease_text(await store.lease_holder(conn, name=LEASE_NAME))}")
        try:
            notes = await store.read_notes(conn)
        except SQLAlchemyError:  # an outbox no shipper has upgraded to revision 0003 yet
            notes = {}
        for name, (text, since) in notes.items():
            moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            print(f"{name.replace('_', ' '):<19} {text} (since {moment})")

    await _reading_store(url, show)


async def _migrate(url: str, *, stamp: bool) -> None:
    where = redact_url(url)

    def run(conn: Connection) -> str:
        if migrate.current_revision(conn) is not None or not migrate.host_owned(conn):
            if stamp and migrate.current_revision(conn) is None:
                raise ConfigError(f"nothing to stamp: {where} has no outbox tables yet")
            migrate.upgrade(conn)
            return f"outbox {where} is at revision {migrate.current_revision(conn)} (current)"
        if stamp:
            migrate.stamp(conn)
            return (
                f"outbox {where}: your service's tables match; stamped revision "
                f"{migrate.current_revision(conn)}, later versions upgrade them"
            )
        problems = migrate.schema_problems(conn)
        if problems:
            raise OutboxSchemaError(
                f"the outbox tables in {where} were made by your service and do not match "
                f"this version's schema: {'; '.join(problems)}"
            )
        return (
            f"outbox {where}: the tables belong to your service and match this version's "
            "schema; nothing to do (--stamp hands them over to usage-outbox's migrations)"
        )

    engine = create_outbox_engine(url)
    try:
        async with migrate.migration_lock(), engine.begin() as conn:
            print(await conn.run_sync(run))
    finally:
        await engine.dispose()


async def _dead_list(url: str, limit: int) -> None:
    async def show(conn: Any) -> None:
        rows = await store.dead_rows(conn, limit=limit)
        print(f"{'id':>8}  {'event_id':36}  {'attempts':>8}  reason")
        for row in rows:
            print(f"{row.id:>8}  {row.event_id:36}  {row.attempts:>8}  {row.last_error}")
        print(f"({len(rows)} dead rows shown)")

    await _reading_store(url, show)


async def _dead_requeue(url: str, ids: list[int] | None) -> None:
    async def requeue(conn: Any) -> None:
        count = await store.requeue_dead(conn, ids)
        print(f"requeued {count} dead rows")

    await _with_store(url, requeue)


async def _dead_purge(url: str, older_than: float, dry_run: bool) -> None:
    async def purge(conn: Any) -> None:
        before = time.time() - older_than
        count = await store.purge_dead(conn, before=before, dry_run=dry_run)
        if dry_run:
            print(f"would purge {count} dead rows (dry run)")
        else:
            print(f"purged {count} dead rows")

    await _with_store(url, purge)


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
        if args.command == "migrate":
            target = args.database_url or environment.get("USAGE_OUTBOX_URL") or DEFAULT_PATH
            target = resolve_url(target)
            missing = missing_driver(target)
            if missing is not None:
                raise ConfigError(missing)
            asyncio.run(_migrate(target, stamp=args.stamp))
            return 0
        url = _outbox_url(args, environment)
        if args.command == "status":
            asyncio.run(_status(url))
        elif args.dead_command == "list":
            asyncio.run(_dead_list(url, args.limit))
        elif args.dead_command == "purge":
            asyncio.run(_dead_purge(url, args.older_than, args.dry_run))
        else:
            if not args.ids and not args.all:
                raise ConfigError("dead requeue: give row ids or --all")
            asyncio.run(_dead_requeue(url, None if args.all else args.ids))
        return 0
    except ConfigError as exc:
        print(f"usage-shipper: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OutboxError, SQLAlchemyError, OSError) as exc:
        print(f"usage-shipper: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
