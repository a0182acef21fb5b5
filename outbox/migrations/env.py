"""alembic environment for the outbox's own migration history.

Used by ``alembic upgrade head`` (with ``alembic.ini`` at the project root) and by
:func:`outbox.migrate.upgrade`, which passes an open connection in
``config.attributes["connection"]``. The URL comes from ``-x url=...``, then
``OUTBOX_DATABASE_URL``, then ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

from outbox.alembic_env import run_env
from outbox.schema import VERSION_TABLE, metadata
from outbox.sqlite import create_outbox_sync_engine

#: PostgreSQL advisory lock key held while migrating ("usage_ob" in ASCII).
MIGRATION_LOCK_KEY = 0x75736167655F6F62

run_env(
    metadata=metadata,
    version_table=VERSION_TABLE,
    url_env="OUTBOX_DATABASE_URL",
    make_engine=create_outbox_sync_engine,
    pg_lock_key=MIGRATION_LOCK_KEY,
)
