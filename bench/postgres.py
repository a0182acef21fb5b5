"""Throwaway PostgreSQL databases for the benchmarks and the fault scenarios."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

#: The local server the scale-out scenario, the soak and the billing benchmark use.
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def throwaway_postgres(server_url: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server at ``server_url``, dropped afterwards."""
    import sqlalchemy as sa

    name = f"usage_throwaway_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
