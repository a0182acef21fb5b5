"""alembic environment for billing's own migration history.

Separate from the outbox's (``outbox/migrations``), with its own version table
(``billing_alembic_version``), so billing and the outbox can be deployed alone or share
one database. Used by :func:`billing.migrate.upgrade`, which passes an open connection in
``config.attributes["connection"]``, and by the alembic command line::

    alembic -c billing/migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head

The URL comes from ``-x url=...``, then ``BILLING_DATABASE_URL``, then ``sqlalchemy.url``.
"""

from __future__ import annotations

from billing.engines import create_billing_sync_engine
from billing.schema import VERSION_TABLE, metadata
from outbox.alembic_env import run_env

#: PostgreSQL advisory lock key held while migrating ("billing" in ASCII).
MIGRATION_LOCK_KEY = 0x62696C6C696E67


def _is_billing_table(name: str | None, type_: str, _parent_names: object) -> bool:
    # Only billing's tables: the outbox may live in the same database.
    if type_ == "table":
        return name in metadata.tables
    return True


run_env(
    metadata=metadata,
    version_table=VERSION_TABLE,
    url_env="BILLING_DATABASE_URL",
    make_engine=create_billing_sync_engine,
    include_name=_is_billing_table,
    pg_lock_key=MIGRATION_LOCK_KEY,
)
