"""alembic environment for the outbox's own migration history.

Used by ``alembic upgrade head`` (with ``alembic.ini`` at the project root) and by
:func:`outbox.migrate.upgrade`, which passes an open connection in
``config.attributes["connection"]``. The URL comes from ``-x url=...``, then
``OUTBOX_DATABASE_URL``, then ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from sqlalchemy import Connection

from outbox.schema import VERSION_TABLE, metadata
from outbox.sqlite import create_outbox_sync_engine

config = context.config

#: PostgreSQL advisory lock key held while migrating ("usage_ob" in ASCII).
MIGRATION_LOCK_KEY = 0x75736167655F6F62


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Processes starting together (service replicas, shippers) would each try to create
        # the tables and all but one fail on a duplicate key in pg_type: they take turns,
        # and the later ones find the schema current. The lock ends with the transaction.
        # (On SQLite the engines of outbox.sqlite start with BEGIN IMMEDIATE instead.)
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("OUTBOX_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set OUTBOX_DATABASE_URL")
    return url


if context.is_offline_mode():
    context.configure(
        url=_url(), target_metadata=metadata, version_table=VERSION_TABLE, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_outbox_sync_engine(_url())
        try:
            with engine.connect() as connection:
                _run(connection)
                connection.commit()
        finally:
            engine.dispose()
