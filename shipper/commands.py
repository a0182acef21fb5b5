"""The operator commands of ``usage-shipper``: ``status``, ``migrate`` and ``dead``.

They open the outbox themselves, briefly, beside a running shipper; the read-only ones
(``status``, ``dead list``) write nothing, so they also work on a file this user cannot
write. The outbox must exist: they create nothing but ``migrate``'s tables.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from outbox import leases, migrate, store
from outbox.drivers import missing_driver
from outbox.errors import ConfigError, OutboxSchemaError
from outbox.sqlite import create_outbox_engine, sqlite_file
from shipper.lease import LEASE_NAME
from usage_runtime.redact import redact_url


def existing_outbox(url: str) -> str:
    """``url``, checked: its driver is installed and, for SQLite, the file is there."""
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


async def status(url: str) -> None:
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
        holder = await conn.run_sync(leases.lease_holder, name=LEASE_NAME)
        print(f"lease               {_lease_text(holder)}")
        try:
            notes = await conn.run_sync(leases.read_notes)
        except SQLAlchemyError:  # an outbox no shipper has upgraded to revision 0003 yet
            notes = {}
        for name, (text, since) in notes.items():
            moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            print(f"{name.replace('_', ' '):<19} {text} (since {moment})")

    await _reading_store(url, show)


async def migrate_outbox(url: str, *, stamp: bool) -> None:
    missing = missing_driver(url)
    if missing is not None:
        raise ConfigError(missing)
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


async def dead_list(url: str, limit: int) -> None:
    async def show(conn: Any) -> None:
        rows = await store.dead_rows(conn, limit=limit)
        print(f"{'id':>8}  {'event_id':36}  {'attempts':>8}  reason")
        for row in rows:
            print(f"{row.id:>8}  {row.event_id:36}  {row.attempts:>8}  {row.last_error}")
        print(f"({len(rows)} dead rows shown)")

    await _reading_store(url, show)


async def dead_requeue(url: str, ids: list[int] | None) -> None:
    async def requeue(conn: Any) -> None:
        count = await store.requeue_dead(conn, ids)
        print(f"requeued {count} dead rows")

    await _with_store(url, requeue)


async def dead_purge(url: str, older_than: float, dry_run: bool) -> None:
    async def purge(conn: Any) -> None:
        before = time.time() - older_than
        count = await store.purge_dead(conn, before=before, dry_run=dry_run)
        if dry_run:
            print(f"would purge {count} dead rows (dry run)")
        else:
            print(f"purged {count} dead rows")

    await _with_store(url, purge)
