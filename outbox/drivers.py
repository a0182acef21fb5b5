"""Database URLs as users type them: the async driver each one needs, and a one-line
answer when that driver is not installed.

``sqlite:///path`` and ``postgresql://...`` are the URLs people copy from SQLAlchemy's
documentation; the outbox's engines are async, so they become ``sqlite+aiosqlite`` and
``postgresql+psycopg``. The PostgreSQL driver is an extra (``usage-outbox[postgres]``):
without it SQLAlchemy raises a ``ModuleNotFoundError`` from deep inside
``create_async_engine``, which the command lines turn into this module's one line.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

#: What to install for a database whose driver is missing.
_INSTALL = {"postgresql": "pip install 'usage-outbox[postgres]'"}
#: Sync drivers users name, and the async driver the outbox's engines use instead.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg2": "postgresql+psycopg",
}


def async_url(url: str) -> str:
    """``url`` with an async driver (``sqlite:///x`` -> ``sqlite+aiosqlite:///x``)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # the caller's validation reports it
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        return url
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def missing_driver(url: str | sa.URL) -> str | None:
    """Why no engine can be made for ``url`` because its driver is not installed (one
    line naming what to install), or None."""
    parsed = make_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as exc:
        backend = parsed.get_backend_name()
        install = _INSTALL.get(backend, f"install the Python package of {parsed.drivername}")
        return (
            f"database url {parsed.render_as_string(hide_password=True)}: the {backend} "
            f"driver is not installed ({exc}): {install}"
        )
    return None
