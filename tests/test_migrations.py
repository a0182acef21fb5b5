"""The outbox's alembic history on SQLite and PostgreSQL, and its drift from the Table.

* ``alembic upgrade head`` / ``downgrade base`` through the real CLI from the project
  root (``alembic.ini``), on a SQLite file and on a throwaway PostgreSQL database;
* autogenerate (``compare_metadata``, configured like ``outbox/migrations/env.py``) finds
  no difference between the migrated database and ``outbox.schema.metadata``; the same
  check does find a difference when the database drifts, so it can fail;
* several processes opening the same fresh file at once all succeed, migrating once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from contextlib import closing
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from outbox import Outbox
from outbox.migrate import alembic_config, upgrade
from outbox.schema import VERSION_TABLE, metadata
from outbox.sqlite import create_outbox_sync_engine

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = str(Path(sys.executable).with_name("alembic"))
OUTBOX_TABLES = {"usage_outbox", "usage_outbox_lease"}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_DATABASE_URL"}
    done = subprocess.run(
        [ALEMBIC, "-x", f"url={url}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"alembic {' '.join(args)} failed:\n{done.stderr}"
    return done


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def version(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")))


def drift(engine: sa.Engine) -> list[Any]:
    """What autogenerate would write into a new migration; [] means none."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "target_metadata": metadata,
                "version_table": VERSION_TABLE,
                "render_as_batch": conn.dialect.name == "sqlite",
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, metadata))


def check_history(url: str, engine: sa.Engine) -> None:
    assert HEAD is not None
    alembic(url, "upgrade", "head")
    assert tables(engine) >= OUTBOX_TABLES
    assert version(engine) == [HEAD]
    assert drift(engine) == []
    current = alembic(url, "current")
    assert HEAD in current.stdout

    alembic(url, "upgrade", "head")  # again: nothing to do, nothing breaks
    assert version(engine) == [HEAD]

    alembic(url, "downgrade", "base")
    assert not OUTBOX_TABLES & tables(engine)
    assert version(engine) == []

    alembic(url, "upgrade", "head")
    assert tables(engine) >= OUTBOX_TABLES
    assert drift(engine) == []


def test_sqlite_upgrade_downgrade_and_no_drift(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    try:
        check_history(url, engine)
        with closing(sqlite3.connect(path)) as conn:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal", "the CLI goes through the outbox engine settings"
    finally:
        engine.dispose()


def test_postgres_upgrade_downgrade_and_no_drift(postgres_url: sa.URL) -> None:
    url = postgres_url.render_as_string(hide_password=False)
    engine = sa.create_engine(postgres_url)
    try:
        check_history(url, engine)
        with engine.connect() as conn:
            column_type = conn.scalar(
                sa.text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'usage_outbox' AND column_name = 'payload'"
                )
            )
        assert column_type == "bytea"
    finally:
        engine.dispose()


def _drift_is_detected(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_usage_outbox_state_id"))
        conn.execute(sa.text("ALTER TABLE usage_outbox ADD COLUMN stray INTEGER"))
    found = {entry[0] if isinstance(entry, tuple) else entry[0][0] for entry in drift(engine)}
    assert {"remove_index", "remove_column"} <= found or {"add_index", "remove_column"} <= found


def test_the_drift_check_can_fail_sqlite(outbox_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{outbox_path}")
    try:
        assert drift(engine) == []
        _drift_is_detected(engine)
    finally:
        engine.dispose()


def test_the_drift_check_can_fail_postgres(postgres_sync_engine: sa.Engine) -> None:
    assert drift(postgres_sync_engine) == []
    _drift_is_detected(postgres_sync_engine)


def test_the_table_can_join_a_host_services_own_metadata(tmp_path: Path) -> None:
    """A service that keeps the outbox in its own database adds the Table to its own
    metadata (or migrations); what it creates that way is what the migration creates."""
    engine = create_outbox_sync_engine(f"sqlite:///{tmp_path / 'host.db'}")
    try:
        host = sa.MetaData()
        sa.Table("orders", host, sa.Column("id", sa.Integer, primary_key=True))
        for table in metadata.tables.values():
            table.to_metadata(host)
        host.create_all(engine)
        assert OUTBOX_TABLES | {"orders"} <= tables(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, host) == []
    finally:
        engine.dispose()


# -- concurrent start ------------------------------------------------------------------


def open_outbox_process(path: str, ready: Event, start: Event, result: str) -> None:
    try:
        ready.set()
        if not start.wait(60):
            raise TimeoutError("never told to start")

        async def run() -> str:
            async with Outbox(path) as outbox:
                return await outbox.record(
                    user_id="u",
                    product_id="gpt-4",
                    provider="openai",
                    operation="chat",
                    service_type="text",
                    input_tokens=1,
                )

        Path(result).write_text("ok " + asyncio.run(run()))
    except BaseException as exc:
        Path(result).write_text("".join(traceback.format_exception(exc)))


def migrate_process(url: str, ready: Event, start: Event, result: str) -> None:
    """Connect first, then migrate the moment ``start`` is set: the widest race."""
    try:
        engine = create_outbox_sync_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        ready.set()
        if not start.wait(60):
            raise TimeoutError("never told to start")
        with engine.begin() as conn:
            upgrade(conn)
        engine.dispose()
        open_outbox_process(url, ready, start, result)
    except BaseException as exc:
        Path(result).write_text("".join(traceback.format_exception(exc)))


def open_at_once(url_or_path: str, results: list[Path], target: Any = open_outbox_process) -> None:
    """Start one process per result file; each opens an Outbox on ``url_or_path`` (a fresh
    database: the open migrates it) at the same moment and records one event."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    ready = [context.Event() for _ in results]
    processes = [
        context.Process(target=target, args=(url_or_path, r_ready, start, str(r)))
        for r, r_ready in zip(results, ready, strict=True)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 90
    try:
        # Every process imported and waiting: then all go at once.
        for process, event in zip(processes, ready, strict=True):
            while not event.wait(0.1):
                assert process.is_alive(), f"an opener died before starting: {process.exitcode}"
                assert time.monotonic() < deadline, "an opener never started"
        start.set()
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            assert not process.is_alive(), "an opener did not finish in time"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    outcomes = [r.read_text() for r in results]
    assert all(o.startswith("ok ") for o in outcomes), outcomes


def check_opened(engine: sa.Engine, events: int) -> None:
    assert version(engine) == [HEAD]
    assert drift(engine) == []
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM usage_outbox")) == events


def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    results = [tmp_path / f"open-{i}.txt" for i in range(5)]
    open_at_once(str(path), results)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        check_opened(engine, len(results))
    finally:
        engine.dispose()


def test_processes_opening_one_fresh_postgres_database_at_once(
    postgres_url: sa.URL, tmp_path: Path
) -> None:
    # Without a lock, all but one failed on a duplicate key in pg_type.
    results = [tmp_path / f"open-{i}.txt" for i in range(4)]
    open_at_once(postgres_url.render_as_string(hide_password=False), results, migrate_process)
    engine = sa.create_engine(postgres_url)
    try:
        check_opened(engine, len(results))
    finally:
        engine.dispose()
