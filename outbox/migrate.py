"""Run the outbox's alembic migrations from code (the ``Outbox`` object, the shipper, tests).

The scripts ship inside the package (``outbox/migrations``), so an installed shipper can
bring a fresh file to the current schema without a source checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
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
