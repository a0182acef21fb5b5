"""An outbox whose tables a host service created (from ``outbox.metadata``, as the README
offers): the shipper ships from it without touching the schema, refuses in one line when
it does not match, and ``usage-shipper migrate`` creates, upgrades or stamps an outbox
from the installed package."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa

from outbox import metadata, record_usage_sync
from outbox.migrate import head_revision
from outbox.schema import VERSION_TABLE
from tests.fixtures.shipper import (
    msg_ids,
    pending,
    read_stream,
    run_cli,
    shipper_env,
    usage_args,
)
from usage_demo.natsserver import NatsServer


def _host_creates_tables(path: Path, schema: sa.MetaData = metadata, events: int = 5) -> list[str]:
    """What a service does with ``create_all`` (or its own alembic history), then writes."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        schema.create_all(engine)
        ids: list[str] = []
        if events:
            with engine.begin() as conn:
                ids = [record_usage_sync(conn, **usage_args(i)) for i in range(events)]
        return ids
    finally:
        engine.dispose()


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _old_schema() -> sa.MetaData:
    """The outbox tables as an older version had them (no ``sent_at``)."""
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if c.name != "sent_at"
        ]
        sa.Table(table.name, old, *columns)
    return old


async def test_the_shipper_ships_from_tables_a_host_created(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    path = tmp_path / "service.db"
    ids = _host_creates_tables(path)
    before = _tables(path)
    env = shipper_env(
        USAGE_OUTBOX_URL=str(path), NATS_URL=nats_server.url, SHIPPER_EXIT_WHEN_IDLE="true"
    )
    result = run_cli("run", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "belong to the service" in result.stderr
    assert pending(path) == 0
    assert sorted(msg_ids(await read_stream(nats_server.url))) == sorted(ids)
    assert _tables(path) == before  # nothing created or altered: the host owns the schema


def test_a_host_schema_that_does_not_match_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "service.db"
    _host_creates_tables(path, _old_schema(), events=0)
    env = shipper_env(USAGE_OUTBOX_URL=str(path), NATS_URL="nats://127.0.0.1:1")
    result = run_cli("run", env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("usage-shipper: the outbox tables were created outside"), last
    assert "usage_outbox lacks column(s) sent_at" in last
    assert "Traceback" not in result.stderr
    assert VERSION_TABLE not in _tables(path)


def test_migrate_creates_a_new_outbox_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    env = shipper_env()
    first = run_cli("migrate", "--database-url", str(path), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"outbox sqlite+aiosqlite:///{path} is at revision {head_revision()} (current)"
    )
    assert {"usage_outbox", "usage_outbox_lease", VERSION_TABLE} <= _tables(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = run_cli("migrate", env=shipper_env(USAGE_OUTBOX_URL=str(path)))
    assert again.returncode == 0 and again.stdout == first.stdout


def test_migrate_checks_and_stamps_tables_a_host_created(tmp_path: Path) -> None:
    path = tmp_path / "service.db"
    _host_creates_tables(path, events=1)
    env = shipper_env(USAGE_OUTBOX_URL=str(path))
    checked = run_cli("migrate", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "belong to your service and match" in checked.stdout
    assert VERSION_TABLE not in _tables(path)
    stamped = run_cli("migrate", "--stamp", env=env)
    assert stamped.returncode == 0, stamped.stderr
    assert f"stamped revision {head_revision()}" in stamped.stdout
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [
            (head_revision(),)
        ]
    assert pending(path) == 1  # the service's row is untouched


def test_migrate_refuses_host_tables_that_do_not_match(tmp_path: Path) -> None:
    path = tmp_path / "service.db"
    _host_creates_tables(path, _old_schema(), events=0)
    result = run_cli("migrate", "--stamp", "--database-url", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "usage-shipper: cannot stamp: the outbox tables do not match this version's schema: "
        "table usage_outbox lacks column(s) sent_at"
    )
