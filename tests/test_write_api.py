"""The write API on real databases: it joins the caller's transaction and never commits it.

SQLite files through aiosqlite and pysqlite, PostgreSQL through psycopg (async and sync).
A business table of the test's own lives in the same database, so "the order and its usage
event commit or vanish together" is checked against real rows. The network tripwire
patches ``socket.socket.connect``: the database is never mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from outbox import (
    InvalidUsageEvent,
    Outbox,
    OutboxError,
    OutboxStoreError,
    UsageEventPublisherMixin,
    outbox_table,
    record_usage,
    record_usage_sync,
    record_usages,
    record_usages_sync,
)
from outbox.sqlite import create_outbox_engine, create_outbox_sync_engine
from tests.fixtures.databases import count_outbox_rows

ARGS: dict[str, Any] = {
    "user_id": "user-1",
    "product_id": "gpt-4.1",
    "provider": "openai",
    "operation": "chat",
    "service_type": "text",
    "input_tokens": 100,
    "output_tokens": 200,
}
BAD: dict[str, Any] = {**ARGS, "output_tokens": -1}

business = sa.MetaData()
orders = sa.Table(
    "orders",
    business,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("note", sa.String(50), nullable=False, unique=True),
)


class Boom(Exception):
    """The caller's own failure, raised inside its transaction."""


def args(index: int) -> dict[str, Any]:
    return {**ARGS, "user_id": f"user-{index}", "metadata": {"n": index}}


def sqlite_ids(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT event_id FROM usage_outbox")}


def sqlite_orders(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


@pytest.fixture
def with_orders(outbox_path: Path) -> Path:
    engine = sa.create_engine(f"sqlite:///{outbox_path}")
    business.create_all(engine)
    engine.dispose()
    return outbox_path


# -- async: AsyncSession and AsyncConnection ---------------------------------------------


async def test_async_session_commit_writes_exactly_one(
    async_engine: AsyncEngine, outbox_path: Path
) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        event_id = await record_usage(session, **ARGS)
        # Inside the caller's open transaction: nobody else sees it before the commit.
        assert count_outbox_rows(outbox_path) == 0
    assert sqlite_ids(outbox_path) == {event_id}


async def test_async_session_rollback_leaves_nothing(
    async_engine: AsyncEngine, outbox_path: Path
) -> None:
    async with AsyncSession(async_engine) as session:
        await record_usage(session, **ARGS)
        await session.rollback()
    assert count_outbox_rows(outbox_path) == 0
    async with AsyncSession(async_engine) as session:
        await record_usage(session, **ARGS)
    # Closed without a commit: the session rolls back, nothing was committed for it.
    assert count_outbox_rows(outbox_path) == 0


async def test_async_connection_commit_and_rollback(
    async_engine: AsyncEngine, outbox_path: Path
) -> None:
    async with async_engine.connect() as conn:
        await record_usage(conn, **ARGS)
        await conn.rollback()
        kept = await record_usage(conn, **ARGS)
        assert count_outbox_rows(outbox_path) == 0
        await conn.commit()
    assert sqlite_ids(outbox_path) == {kept}


async def test_async_business_row_and_event_commit_or_vanish_together(
    with_orders: Path,
) -> None:
    # The service's own engine, not made by this package: the write API must not care.
    engine = create_async_engine(f"sqlite+aiosqlite:///{with_orders}")
    try:
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(orders.insert().values(note="kept"))
            kept = await record_usage(session, **ARGS)

        with pytest.raises(Boom):
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(orders.insert().values(note="lost"))
                await record_usage(session, **ARGS)
                raise Boom

        # The business write fails after the event was added: the event goes with it.
        with pytest.raises(sa.exc.IntegrityError):
            async with AsyncSession(engine) as session, session.begin():
                await record_usage(session, **ARGS)
                await session.execute(orders.insert().values(note="kept"))
    finally:
        await engine.dispose()
    assert sqlite_orders(with_orders) == 1
    assert sqlite_ids(with_orders) == {kept}


async def test_async_batch_commits_all_or_refuses_all(
    async_engine: AsyncEngine, outbox_path: Path
) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        ids = await record_usages(session, [args(i) for i in range(50)])
    async with async_engine.begin() as conn:
        ids += await record_usages(conn, [args(i) for i in range(50, 60)])
        assert await record_usages(conn, []) == []
    assert len(ids) == len(set(ids)) == 60
    assert sqlite_ids(outbox_path) == set(ids)

    for target in ("session", "connection"):
        with pytest.raises(InvalidUsageEvent) as refused:
            if target == "session":
                async with AsyncSession(async_engine) as session, session.begin():
                    await record_usages(session, [args(1), args(2), BAD, args(3)])
            else:
                async with async_engine.begin() as conn:
                    await record_usages(conn, [args(1), args(2), BAD, args(3)])
        assert refused.value.field == "output_tokens"
    assert count_outbox_rows(outbox_path) == 60


async def test_async_refused_event_keeps_the_callers_transaction_usable(
    async_engine: AsyncEngine, outbox_path: Path
) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        with pytest.raises(InvalidUsageEvent):
            await record_usage(session, **BAD)
        kept = await record_usage(session, **ARGS)
    assert sqlite_ids(outbox_path) == {kept}


# -- sync: Session and Connection --------------------------------------------------------


def test_sync_session_commit_rollback(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with Session(sync_engine) as session:
        record_usage_sync(session, **ARGS)
        session.rollback()
        kept = record_usage_sync(session, **ARGS)
        assert count_outbox_rows(outbox_path) == 0
        session.commit()
    assert sqlite_ids(outbox_path) == {kept}


def test_sync_connection_commit_rollback(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with sync_engine.connect() as conn:
        record_usage_sync(conn, **ARGS)
        conn.rollback()
        kept = record_usage_sync(conn, **ARGS)
        conn.commit()
    assert sqlite_ids(outbox_path) == {kept}


def test_sync_business_row_and_event_commit_or_vanish_together(with_orders: Path) -> None:
    engine = create_outbox_sync_engine(f"sqlite:///{with_orders}")
    try:
        with Session(engine) as session, session.begin():
            session.execute(orders.insert().values(note="kept"))
            kept = record_usage_sync(session, **ARGS)
        with pytest.raises(Boom), Session(engine) as session, session.begin():
            session.execute(orders.insert().values(note="lost"))
            record_usage_sync(session, **ARGS)
            raise Boom
        with pytest.raises(Boom), engine.begin() as conn:
            conn.execute(orders.insert().values(note="lost too"))
            record_usage_sync(conn, **ARGS)
            raise Boom
    finally:
        engine.dispose()
    assert sqlite_orders(with_orders) == 1
    assert sqlite_ids(with_orders) == {kept}


def test_sync_batch_commits_all_or_refuses_all(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with Session(sync_engine) as session, session.begin():
        ids = record_usages_sync(session, [args(i) for i in range(30)])
    with sync_engine.begin() as conn:
        ids += record_usages_sync(conn, (args(i) for i in range(30, 40)))  # any iterable
    assert sqlite_ids(outbox_path) == set(ids) and len(ids) == 40
    with pytest.raises(InvalidUsageEvent) as refused, sync_engine.begin() as conn:
        record_usages_sync(conn, [args(1), {**ARGS, "metadata": {"model": "x"}}])
    assert refused.value.field == "metadata"
    with pytest.raises(InvalidUsageEvent), Session(sync_engine) as session, session.begin():
        record_usages_sync(session, [*[args(i) for i in range(10)], BAD])
    assert count_outbox_rows(outbox_path) == 40


# -- no network on the write path ----------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """A tripwire: any socket connect raises (and is recorded). Not a database mock."""
    attempts: list[object] = []

    def refuse(_sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise AssertionError(f"the write path opened a network connection to {address!r}")

    def refuse_ex(sock: socket.socket, address: object) -> int:
        refuse(sock, address)
        return 1

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_ex)
    # The tripwire is armed: a real connect attempt fails before reaching the network.
    with pytest.raises(AssertionError), socket.socket() as probe:
        probe.connect(("127.0.0.1", 9))
    attempts.clear()
    yield attempts
    assert attempts == [], attempts


async def test_write_path_opens_no_network_connection(
    no_network: list[object], outbox_path: Path, tmp_path: Path
) -> None:
    engine = create_outbox_engine(f"sqlite+aiosqlite:///{outbox_path}")
    try:
        async with AsyncSession(engine) as session, session.begin():
            await record_usage(session, **ARGS)
            await record_usages(session, [args(1), args(2)])
    finally:
        await engine.dispose()
    sync = create_outbox_sync_engine(f"sqlite:///{outbox_path}")
    try:
        with sync.begin() as conn:
            record_usage_sync(conn, **ARGS)
            record_usages_sync(conn, [args(3)])
    finally:
        sync.dispose()

    async with Outbox(tmp_path / "fresh.db") as outbox:  # opening migrates a new file
        await outbox.record(**ARGS)
        await outbox.record_many([args(4), args(5)])

    class Service(UsageEventPublisherMixin):
        provider_name = "openai"
        model_name = "gpt-4"

    service = Service()
    service.usage_outbox = Outbox(tmp_path / "legacy.db")  # type: ignore[misc]
    try:
        assert await service._publish_usage_event("u", "text", "chat", input_tokens=1)
    finally:
        await service.usage_outbox.close()  # type: ignore[union-attr]
    assert count_outbox_rows(outbox_path) == 5
    assert count_outbox_rows(tmp_path / "fresh.db") == 3


# -- the Outbox object: group commit ------------------------------------------------------


async def test_outbox_group_commit_each_caller_returns_after_its_commit(
    outbox_path: Path,
) -> None:
    callers = 400
    seen = sqlite3.connect(outbox_path, isolation_level=None)  # an independent reader
    visible_on_return: list[bool] = []

    async def caller(outbox: Outbox, index: int) -> str:
        event_id = await outbox.record(**args(index))
        # Durable before the call returned: another connection already sees the row.
        row = seen.execute("SELECT 1 FROM usage_outbox WHERE event_id = ?", (event_id,))
        visible_on_return.append(row.fetchone() is not None)
        return event_id

    try:
        async with Outbox(outbox_path) as outbox:
            ids = await asyncio.gather(*(caller(outbox, i) for i in range(callers)))
            many = await outbox.record_many([args(i) for i in range(10)])
            commits = outbox.commits
    finally:
        seen.close()
    assert len(set(ids)) == callers
    assert visible_on_return == [True] * callers
    assert sqlite_ids(outbox_path) == set(ids) | set(many)
    assert count_outbox_rows(outbox_path) == callers + 10
    assert 2 <= commits < callers, f"{commits} commits for {callers} concurrent events"


async def test_outbox_refuses_bad_events_before_queueing(outbox_path: Path) -> None:
    async with Outbox(outbox_path) as outbox:
        with pytest.raises(InvalidUsageEvent):
            await outbox.record(**BAD)
        with pytest.raises(InvalidUsageEvent):
            await outbox.record_many([args(1), BAD])
        assert outbox.commits == 0
        await outbox.record(**ARGS)
    assert count_outbox_rows(outbox_path) == 1


async def test_outbox_failed_group_fails_its_callers_and_the_writer_lives_on(
    outbox_path: Path,
) -> None:
    with closing(sqlite3.connect(outbox_path)) as conn:
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON usage_outbox "
            "WHEN NEW.subject = 'billing.usage.recorded.poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
        conn.commit()
    async with Outbox(outbox_path) as outbox:
        results = await asyncio.gather(
            *(outbox.record(**args(i)) for i in range(40)),
            outbox.record(**{**ARGS, "product_id": "poison"}),
            *(outbox.record(**args(i)) for i in range(40, 80)),
            return_exceptions=True,
        )
        after = await outbox.record(**ARGS)
    errors = [r for r in results if isinstance(r, BaseException)]
    written = {r for r in results if isinstance(r, str)}
    assert isinstance(results[40], OutboxStoreError)
    assert "poisoned row" in str(results[40])
    assert all(isinstance(e, OutboxStoreError) for e in errors)
    assert sqlite_ids(outbox_path) == written | {after}, "an error means not written"


async def test_outbox_write_failure_is_an_outbox_error(tmp_path: Path) -> None:
    # First, so that aiosqlite's clean-up of the failed connect (a future it never awaits)
    # runs while this test's event loop is still open.
    with pytest.raises(OutboxStoreError):
        await Outbox(tmp_path / "missing" / "outbox.db").open()
    path = tmp_path / "outbox.db"
    async with Outbox(path) as outbox:
        await outbox.record(**ARGS)
    read_only = Outbox(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true", run_migrations=False)
    try:
        with pytest.raises(OutboxStoreError):
            await read_only.record(**ARGS)
    finally:
        await read_only.close()
    assert count_outbox_rows(path) == 1


async def test_outbox_reopens_after_close(outbox_path: Path) -> None:
    outbox = Outbox(outbox_path)
    await outbox.record(**ARGS)  # opens on first use
    await outbox.close()
    await outbox.record(**ARGS)
    await outbox.close()
    await outbox.close()  # idempotent
    assert count_outbox_rows(outbox_path) == 2


def test_outbox_survives_its_event_loop_ending(outbox_path: Path) -> None:
    """asyncio.run per job (or a loop per test): the next loop starts the writer over
    instead of queueing into a writer that will never run again."""
    outbox = Outbox(outbox_path)

    async def one() -> str:
        return await asyncio.wait_for(outbox.record(**ARGS), 10)

    first = asyncio.run(one())
    second = asyncio.run(one())

    async def finish() -> None:
        await asyncio.wait_for(outbox.close(), 10)

    asyncio.run(finish())
    assert sqlite_ids(outbox_path) == {first, second}


async def test_outbox_used_from_another_running_loop_is_refused(outbox_path: Path) -> None:
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**ARGS)

        def elsewhere() -> BaseException | None:
            async def call() -> None:
                await asyncio.wait_for(outbox.record(**ARGS), 5)

            try:
                asyncio.run(call())
            except BaseException as exc:
                return exc
            return None

        error = await asyncio.to_thread(elsewhere)
    assert isinstance(error, OutboxError) and "another event loop" in str(error)
    assert count_outbox_rows(outbox_path) == 1


async def test_outbox_keeps_the_wal_bounded_with_its_own_checkpoints(outbox_path: Path) -> None:
    """The Outbox turns SQLite's in-commit checkpoint off and checkpoints on the side; the
    WAL must still be reset and reused, not grow with every row written."""
    wal = outbox_path.with_name(outbox_path.name + "-wal")
    async with Outbox(outbox_path, checkpoint_every_rows=500) as outbox:

        async def caller(start: int) -> None:
            for i in range(start, start + 150):
                await outbox.record(**args(i))

        await asyncio.gather(*(caller(k * 1000) for k in range(40)))  # 6,000 events
        wal_bytes = wal.stat().st_size
        checkpoints = outbox._checkpointer.checkpoints if outbox._checkpointer else 0
    assert count_outbox_rows(outbox_path) == 6000
    assert checkpoints >= 2
    # Measured: with no checkpoint at all these 6,000 events leave a 9.3 MB WAL.
    assert wal_bytes < 8_000_000, wal_bytes


# -- PostgreSQL -----------------------------------------------------------------------------


def pg_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(outbox_table.c.event_id)))


def pg_orders(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(orders)) or 0)


@pytest.fixture
def pg_with_orders(postgres_sync_engine: sa.Engine) -> sa.Engine:
    business.create_all(postgres_sync_engine)
    return postgres_sync_engine


async def test_postgres_async_record_usage(
    postgres_async_engine: AsyncEngine, pg_with_orders: sa.Engine
) -> None:
    async with AsyncSession(postgres_async_engine) as session, session.begin():
        await session.execute(orders.insert().values(note="kept"))
        kept = await record_usage(session, **ARGS)
        batch = await record_usages(session, [args(i) for i in range(5)])
    with pytest.raises(Boom):
        async with AsyncSession(postgres_async_engine) as session, session.begin():
            await session.execute(orders.insert().values(note="lost"))
            await record_usage(session, **ARGS)
            raise Boom
    async with postgres_async_engine.connect() as conn:
        await record_usage(conn, **ARGS)
        await conn.rollback()
        also: str = await record_usage(conn, **ARGS)
        await conn.commit()
        with pytest.raises(InvalidUsageEvent):
            await record_usages(conn, [args(1), BAD])
        await conn.commit()
    assert pg_orders(pg_with_orders) == 1
    assert pg_ids(pg_with_orders) == {kept, also, *batch}


def test_postgres_sync_record_usage(pg_with_orders: sa.Engine) -> None:
    engine = pg_with_orders
    with Session(engine) as session, session.begin():
        session.execute(orders.insert().values(note="kept"))
        kept = record_usage_sync(session, **ARGS)
    with pytest.raises(sa.exc.IntegrityError), Session(engine) as session, session.begin():
        record_usage_sync(session, **ARGS)
        session.execute(orders.insert().values(note="kept"))  # duplicate: all rolls back
    with engine.connect() as conn:
        record_usage_sync(conn, **ARGS)
        conn.rollback()
        batch = record_usages_sync(conn, [args(i) for i in range(3)])
        conn.commit()
    assert pg_orders(engine) == 1
    assert pg_ids(engine) == {kept, *batch}


async def test_postgres_outbox_group_commit(
    postgres_outbox_url: sa.URL, postgres_sync_engine: sa.Engine
) -> None:
    url = postgres_outbox_url.render_as_string(hide_password=False)
    async with Outbox(url) as outbox:
        ids = await asyncio.gather(*(outbox.record(**args(i)) for i in range(200)))
        commits = outbox.commits
    assert pg_ids(postgres_sync_engine) == set(ids) and len(set(ids)) == 200
    assert 1 <= commits < 200


async def test_postgres_payload_is_stored_byte_exact(postgres_async_engine: AsyncEngine) -> None:
    weird = {**ARGS, "user_id": "用户 ü", "metadata": {"emoji": "🚀", "nul": "a\u0000b"}}
    async with postgres_async_engine.begin() as conn:
        event_id = await record_usage(conn, **weird)
    async with postgres_async_engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(outbox_table.c.payload, outbox_table.c.headers).where(
                    outbox_table.c.event_id == event_id
                )
            )
        ).one()
    payload = json.loads(bytes(row.payload))
    assert payload["user_id"] == "用户 ü" and payload["usage_details"]["nul"] == "a\u0000b"
    assert json.loads(row.headers)["Nats-Msg-Id"] == event_id
