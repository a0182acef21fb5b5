"""The body of an alembic ``env.py``, shared by the outbox's and billing's histories.

Each history's ``env.py`` names its metadata, version table, URL variable and engine
factory and calls :func:`run_env`. It serves both ways in: ``alembic ... upgrade head``
on the command line (URL from ``-x url=...``, then the environment variable, then
``sqlalchemy.url``), and code that passes an open connection in
``config.attributes["connection"]`` (:func:`outbox.migrate.upgrade`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import context


def _database_url(url_env: str) -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get(url_env) or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(f"no database URL: pass -x url=... or set {url_env}")
    return url


def run_env(
    *,
    metadata: sa.MetaData,
    version_table: str,
    url_env: str,
    make_engine: Callable[[str], sa.Engine],
    include_name: Callable[[str | None, str, Any], bool] | None = None,
    pg_lock_key: int | None = None,
) -> None:
    """Run the migrations of one history, offline or online."""
    options: dict[str, Any] = {"target_metadata": metadata, "version_table": version_table}
    if include_name is not None:
        options["include_name"] = include_name
    if context.is_offline_mode():
        context.configure(url=_database_url(url_env), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: sa.Connection) -> None:
        if pg_lock_key is not None and connection.dialect.name == "postgresql":
            # Processes starting together (service replicas, shippers) would each try to
            # create the tables and all but one fail on a duplicate key in pg_type: they
            # take turns, and the later ones find the schema current. The lock ends with
            # the transaction. (On SQLite the engines start with BEGIN IMMEDIATE instead.)
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": pg_lock_key})
        context.configure(
            connection=connection,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()

    given = context.config.attributes.get("connection")
    if given is not None:
        run(given)
        return
    engine = make_engine(_database_url(url_env))
    try:
        with engine.connect() as connection:
            run(connection)
            connection.commit()
    finally:
        engine.dispose()
