"""Run the outbox's alembic migrations from code (the ``Outbox`` object, the shipper,
``usage-shipper migrate``, tests), and check an outbox whose tables a host service owns.

The scripts ship inside the package (``outbox/migrations``), so an installed shipper can
bring a fresh file to the current schema without a source checkout.

Two ways an outbox comes to exist, and :func:`prepare` tells them apart:

* this project's migrations made it (its version table ``usage_outbox_alembic_version``
  names a revision), or it is empty: :func:`prepare` upgrades it to the current schema;
* a host service made the tables itself, from ``outbox.metadata`` in its own alembic
  history or with ``create_all``: there is no version row, and the host owns the
  schema. :func:`prepare` only checks that the tables match the current one, and raises
  :class:`~outbox.errors.OutboxSchemaError` (one line: what is missing, what to do)
  when they do not. It never creates or alters a table a host owns; ``usage-shipper
  migrate --stamp`` hands such an outbox over to this project's migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.errors import OutboxSchemaError
from outbox.schema import VERSION_TABLE, metadata

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(
    connection: Connection | None = None, *, directory: Path = MIGRATIONS_DIR
) -> Config:
    """alembic's configuration for the history in ``directory`` (the outbox's by default;
    billing passes its own), on ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(directory))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` (in its transaction; caller commits).

    On SQLite engines made by :mod:`outbox.sqlite` the transaction starts with
    ``BEGIN IMMEDIATE``, so writer processes starting together migrate one at a time and
    the later ones find the schema already current.
    """
    command.upgrade(alembic_config(connection), revision)


# alembic's ``op`` and ``context`` are module-level proxies. Two migrations running at once
# in one process (each ``run_sync`` is a greenlet, interleaved at every database await)
# tear each other's proxies down: "'NoneType' object has no attribute 'create_table'".
# Every in-process async migration (outbox, billing) takes this per-loop lock.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def migration_lock() -> asyncio.Lock:
    """The lock serialising alembic runs on the running event loop."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade through an async engine, in one transaction, one migration at a time."""
    async with migration_lock(), engine.begin() as conn:
        await conn.run_sync(upgrade, revision)


def head_revision() -> str:
    """The newest revision of the outbox's history, as shipped in this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the outbox history has a head"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision this project's migrations recorded, or None (none ran here)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def schema_problems(connection: Connection) -> list[str]:
    """What the outbox tables lack compared with the current schema (empty: they match)."""
    inspector = sa.inspect(connection)
    present = set(inspector.get_table_names())
    problems: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            problems.append(f"table {table.name} is missing")
            continue
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in columns]
        if missing:
            problems.append(f"table {table.name} lacks column(s) {', '.join(missing)}")
    return problems


def host_owned(connection: Connection) -> bool:
    """True when outbox tables exist that this project's migrations did not make."""
    if current_revision(connection) is not None:
        return False
    present = set(sa.inspect(connection).get_table_names())
    return any(table.name in present for table in metadata.sorted_tables)


def prepare(connection: Connection) -> str:
    """Make the outbox usable: upgrade it when this project's migrations own it (or it is
    empty), check it when a host service's do. Returns ``"migrated"`` or ``"host"``;
    raises :class:`OutboxSchemaError` when a host's tables do not match."""
    if not host_owned(connection):
        upgrade(connection)
        return "migrated"
    problems = schema_problems(connection)
    if problems:
        raise OutboxSchemaError(
            "the outbox tables were created outside usage-outbox's migrations (no row in "
            f"{VERSION_TABLE}) and do not match this version's schema: "
            f"{'; '.join(problems)}. Add them from outbox.metadata to your service's "
            "migrations, or drop the tables and run `usage-shipper migrate`"
        )
    return "host"


def stamp(connection: Connection) -> None:
    """Record the current revision on an outbox whose tables already match it (a host
    made them), so this project's migrations take it over from here."""
    problems = schema_problems(connection)
    if problems:
        raise OutboxSchemaError(
            f"cannot stamp: the outbox tables do not match this version's schema: "
            f"{'; '.join(problems)}"
        )
    command.stamp(alembic_config(connection), "head")


async def prepare_engine(
    engine: AsyncEngine, *, lock: contextlib.AbstractAsyncContextManager[None] | None = None
) -> str:
    """:func:`prepare` through an async engine, in one transaction; ``lock`` (the
    shipper's write lock file) is held around that transaction.

    The transaction holds the write lock (``BEGIN IMMEDIATE``), and alembic's upgrade,
    even with nothing to do, loads the migration scripts meanwhile (10-80 ms measured:
    a writer's longest commit as a shipper started). So the head revision is read from
    the scripts before the transaction, and an outbox already at it costs one ``SELECT``
    inside. A caller with a connection that takes no write lock asks :func:`at_head`
    first and skips this when it says yes."""
    head = await asyncio.to_thread(_cached_head)
    async with lock or contextlib.nullcontext(), migration_lock(), engine.begin() as conn:
        return await conn.run_sync(_prepare_unless_at, head)


def at_head(connection: Connection) -> bool:
    """Whether the outbox's recorded revision is this version's head (nothing to do)."""
    return current_revision(connection) == _cached_head()


_head: list[str] = []


def _cached_head() -> str:
    # The scripts ship with the package: their head cannot change while it runs.
    if not _head:
        _head.append(head_revision())
    return _head[0]


def _prepare_unless_at(connection: Connection, head: str) -> str:
    if current_revision(connection) == head:
        return "migrated"
    return prepare(connection)
