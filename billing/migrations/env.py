"""alembic environment for billing's own migration history.

Separate from the outbox's (``outbox/migrations``), with its own version table
(``billing_alembic_version``), so billing and the outbox can be deployed alone or share
one database. Used by :func:`billing.migrate.upgrade`, which passes an open connection in
``config.attributes["connection"]``, and by the alembic command line::

    alembic -c billing/migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head

The URL comes from ``-x url=...``, then ``BILLING_DATABASE_URL``, then ``sqlalchemy.url``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from billing.db import create_billing_sync_engine
from billing.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Only billing's tables: the outbox may live in the same database.
        include_name=_is_billing_table,
    )
    with context.begin_transaction():
        context.run_migrations()


def _is_billing_table(name: str | None, type_: str, _parent_names: object) -> bool:
    if type_ == "table":
        return name in metadata.tables
    return True


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("BILLING_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set BILLING_DATABASE_URL")
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
        engine = create_billing_sync_engine(_url())
        try:
            with engine.connect() as connection:
                _run(connection)
                connection.commit()
        finally:
            engine.dispose()
