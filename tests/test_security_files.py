"""The outbox and billing SQLite files are created owner-only (0600), -wal and -shm too.

The engines create a missing database file with mode 0600 just before SQLite opens it;
SQLite gives the ``-wal`` and ``-shm`` files it creates the mode of the database file
(checked here with a file made 0640 by hand). Every test runs with umask 022, under which
SQLite alone would have made all three 0644.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.database import BillingDatabase
from outbox import Outbox
from outbox.sqlite import create_outbox_engine, create_outbox_sync_engine, sqlite_url
from outbox.transactions import Transactions
from tests.fixtures.shipper import (
    REPO,
    ShipperRunner,
    run_cli,
    shipper_config,
    shipper_env,
    usage_args,
)
from usage_demo.natsserver import NatsServer

SIDE_FILES = ("-wal", "-shm")


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def modes(database: Path) -> dict[str, int]:
    """The mode of the database file and of its -wal and -shm files."""
    files = {"db": database} | {s: Path(f"{database}{s}") for s in SIDE_FILES}
    return {name: mode(path) for name, path in files.items()}


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_an_outbox_written_through_the_write_api_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as outbox:
        await outbox.record_many([usage_args(i) for i in range(3)])
        assert modes(path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}


async def test_an_outbox_usage_shipper_migrate_creates_is_owner_only(
    tmp_path: Path, nats_server: NatsServer, run_shipper: ShipperRunner
) -> None:
    # The shipper itself creates no outbox (a wrong path must not become an empty one);
    # `usage-shipper migrate` does, owner-only, and the shipper then ships from it.
    path = tmp_path / "fresh.db"
    result = await asyncio.to_thread(run_cli, "migrate", "--database-url", str(path))
    assert result.returncode == 0, result.stderr
    await run_shipper.run(shipper_config(path, nats_server.url))
    assert mode(path) == 0o600


async def test_the_engine_factories_create_owner_only_files(tmp_path: Path) -> None:
    async_path = tmp_path / "async.db"
    engine = create_outbox_engine(sqlite_url(async_path))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x)")
            assert modes(async_path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await engine.dispose()

    sync_path = tmp_path / "sync.db"
    sync_engine = create_outbox_sync_engine(sqlite_url(sync_path, asynchronous=False))
    try:
        with sync_engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x)"))
            assert modes(sync_path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        sync_engine.dispose()


@pytest.mark.parametrize("first", ["write_inline", "read_inline"])
async def test_the_shippers_own_engines_create_owner_only_files(tmp_path: Path, first: str) -> None:
    # Its inline writes (busy timeout 0) and its reads have engines of their own: the
    # first to connect to a missing file creates it, owner-only like the others.
    path = tmp_path / "outbox.db"
    engine = create_outbox_engine(sqlite_url(path))
    db = Transactions(engine)
    try:
        await getattr(db, first)(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        assert mode(path) == 0o600
        await db.write_inline(lambda conn: conn.exec_driver_sql("CREATE TABLE t (x)"))
        assert modes(path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await db.close()
        await engine.dispose()


async def test_the_billing_database_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "billing.db"
    async with BillingDatabase(f"sqlite+aiosqlite:///{path}") as db:
        await db.set_price("gpt-4", "token", "0.00003")
        assert modes(path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}


def test_usage_billing_migrate_creates_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "billing.db"
    result = subprocess.run(
        [sys.executable, "-m", "billing", "migrate", "--database-url", str(path)],
        env=shipper_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert mode(path) == 0o600


async def test_an_existing_file_keeps_its_mode_and_sqlite_gives_it_to_wal_and_shm(
    tmp_path: Path,
) -> None:
    """An operator who shares the outbox with a group creates it with that mode first;
    nothing chmods it back, and the -wal/-shm files follow the database file's mode."""
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    async with Outbox(path) as outbox:
        await outbox.record_many([usage_args(0)])
        assert modes(path) == {"db": 0o640, "-wal": 0o640, "-shm": 0o640}


async def test_memory_and_non_file_urls_are_left_alone(tmp_path: Path) -> None:
    engine = create_outbox_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT 1")).scalar() == 1
    finally:
        await engine.dispose()
    assert not (Path.cwd() / ":memory:").exists()
