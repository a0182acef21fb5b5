"""billing.batch_insert hands rows to the driver without SQLAlchemy's type processing: what
it stores must be exactly what SQLAlchemy would have stored (read back alike, compared
alike), on SQLite (scaled integers, DATETIME text) and PostgreSQL (one JSON parameter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import migrate
from billing.batch_insert import insert_rows
from billing.engines import create_billing_engine
from billing.schema import rejected_events, wallets

COLUMNS = ("user_id", "balance", "updated_at")
MOMENTS = (datetime(2026, 3, 1, 12, 0, 0), datetime(2026, 3, 1, 12, 0, 0, 1))
AMOUNTS = (Decimal("-0.000000001"), Decimal("-123456.5"), Decimal("0"))


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    else:
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    engine = create_billing_engine(url)
    await migrate.upgrade_engine(engine)
    yield engine
    await engine.dispose()


def _rows(prefix: str) -> list[dict[str, object]]:
    return [
        {"user_id": f"{prefix}-{i}-{j}", "balance": a, "updated_at": m}
        for i, a in enumerate(AMOUNTS)
        for j, m in enumerate(MOMENTS)
    ]  # fmt: skip


async def test_rows_are_stored_exactly_as_sqlalchemy_stores_them(engine: AsyncEngine) -> None:
    t = wallets
    async with engine.begin() as conn:
        await conn.run_sync(insert_rows, t, COLUMNS, _rows("raw"))
        await conn.execute(t.insert(), _rows("orm"))
    async with engine.connect() as conn:
        read = (await conn.execute(sa.select(*[t.c[n] for n in COLUMNS]))).all()
        # The stored form itself, as the database compares and sums it.
        stored = (
            await conn.execute(
                sa.select(
                    t.c.user_id, sa.cast(t.c.balance, sa.String), t.c.updated_at.cast(sa.String)
                )
            )
        ).all()
        cutoff = await conn.scalar(sa.select(sa.func.count()).where(t.c.updated_at >= MOMENTS[1]))
    by_id = {row.user_id: row for row in read}
    for row in _rows("raw"):
        assert tuple(by_id[str(row["user_id"])]) == tuple(row[n] for n in COLUMNS)
    forms = {user_id: (balance, moment) for user_id, balance, moment in stored}
    for row in _rows("raw"):
        raw_id = str(row["user_id"])
        assert forms[raw_id] == forms[raw_id.replace("raw", "orm")]
    assert cutoff == 2 * len(AMOUNTS), "times compare alike whichever way they were written"


async def test_on_sqlite_values_a_column_cannot_hold_exactly_are_refused(
    tmp_path: Path,
) -> None:
    # (On PostgreSQL the values go to the server as their text, as before this module: the
    # callers pass quantized Decimals and naive UTC times, billing.pricing's rules.)
    engine = create_billing_engine(f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}")
    await migrate.upgrade_engine(engine)
    too_fine = {**_rows("x")[0], "balance": Decimal("0.0000000001")}
    aware = {**_rows("y")[0], "updated_at": datetime(2026, 3, 1, tzinfo=UTC)}
    for row in (too_fine, aware):
        with pytest.raises((ValueError, sa.exc.StatementError, sa.exc.DBAPIError)):
            async with engine.begin() as conn:
                await conn.run_sync(insert_rows, wallets, COLUMNS, [row])
    await engine.dispose()


async def test_returning_gives_only_the_rows_inserted(engine: AsyncEngine) -> None:
    t = wallets
    rows = _rows("r")
    async with engine.begin() as conn:
        tail = "ON CONFLICT DO NOTHING RETURNING user_id"
        first = await conn.run_sync(insert_rows, t, COLUMNS, rows[:2], tail)
        again = await conn.run_sync(insert_rows, t, COLUMNS, rows, tail)
    assert first == ["r-0-0", "r-0-1"]
    assert sorted(again) == sorted(str(r["user_id"]) for r in rows[2:])


async def test_optional_columns_empty_in_every_row_or_in_some_are_stored_as_given(
    engine: AsyncEngine,
) -> None:
    # On SQLite a nullable column that is None in every row of a statement is left out of
    # it (binding None is slow there); one that is set in some rows is bound for all.
    t = rejected_events
    moment = MOMENTS[0]

    def row(seq: int, event_id: str | None) -> dict[str, object]:
        return {
            "stream": "s", "stream_seq": seq, "subject": "billing.x", "payload": b"{}",
            "payload_sha256": f"h{seq}", "reason": "r", "event_id": event_id,
            "deliveries": 1, "received_at": moment,
        }  # fmt: skip

    none_at_all = [row(1, None), row(2, None)]
    mixed = [row(3, None), row(4, "e-4"), row(5, None)]
    async with engine.begin() as conn:
        for rows in (none_at_all, mixed):
            await conn.run_sync(insert_rows, t, tuple(rows[0]), rows)
    async with engine.connect() as conn:
        stored = dict((await conn.execute(sa.select(t.c.stream_seq, t.c.event_id))).all())
    assert stored == {1: None, 2: None, 3: None, 4: "e-4", 5: None}
