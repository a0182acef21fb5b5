"""Billing's own alembic history (on SQLite and PostgreSQL, beside the outbox's), no drift
from the metadata, and exact decimal storage where SQLite has none."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import billing.migrate
import outbox.migrate
from billing.engines import create_billing_sync_engine
from billing.schema import VERSION_TABLE, metadata
from billing.types import ExactDecimal

# The keys each history's env.py locks on ("billing", "usage_ob" in ASCII).
BILLING_LOCK_KEY = 0x62696C6C696E67
OUTBOX_LOCK_KEY = 0x75736167655F6F62

BILLING_TABLES = {"billing_records", "wallets", "wallet_transactions", "prices", "rejected_events"}


def _drift(engine: sa.Engine, target: sa.MetaData = metadata) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, kind, _p: kind != "table" or name in target.tables,
            },
        )
        return list(compare_metadata(context, target))


def _upgrade(engine: sa.Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        billing.migrate.upgrade(conn, revision)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_billing_sync_engine(f"sqlite:///{tmp_path / 'billing.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(postgres_url: sa.URL) -> Iterator[sa.Engine]:
    engine = create_billing_sync_engine(postgres_url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_upgrade_creates_the_tables_and_autogenerate_finds_no_drift(engine: sa.Engine) -> None:
    _upgrade(engine)
    tables = set(sa.inspect(engine).get_table_names())
    assert tables >= BILLING_TABLES | {VERSION_TABLE}
    assert _drift(engine) == []
    with engine.connect() as conn:
        assert conn.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")) == "billing_0003"


def test_the_drift_check_can_fail(engine: sa.Engine) -> None:
    # A negative control: a column the migrations do not create must show up as drift.
    _upgrade(engine)
    changed = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    sa.Table("wallets", changed, sa.Column("currency", sa.String(3)), extend_existing=True)
    diffs = _drift(engine, changed)
    assert any("currency" in repr(diff) for diff in diffs), diffs


def test_billing_and_outbox_histories_share_one_database_and_downgrade_alone(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        outbox.migrate.upgrade(conn)
    _upgrade(engine)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"usage_outbox", "usage_outbox_alembic_version", VERSION_TABLE} <= tables
    assert _drift(engine) == [], "the outbox's tables are not billing's drift"

    with engine.begin() as conn:
        command.downgrade(billing.migrate.alembic_config(conn), "base")
    tables = set(sa.inspect(engine).get_table_names())
    assert not (tables & BILLING_TABLES)
    assert "usage_outbox" in tables, "billing's downgrade left the outbox alone"
    _upgrade(engine)
    assert _drift(engine) == []


@pytest.mark.parametrize("history", ["billing", "outbox"])
def test_each_history_migrates_postgresql_under_its_advisory_lock(
    pg_engine: sa.Engine, history: str
) -> None:
    # Both histories take PostgreSQL's lock the same way (in outbox.alembic_env): held
    # from the migration until its transaction ends, so processes starting together take
    # turns. Another session cannot take the key meanwhile, and can once committed.
    upgrade = billing.migrate.upgrade if history == "billing" else outbox.migrate.upgrade
    key = BILLING_LOCK_KEY if history == "billing" else OUTBOX_LOCK_KEY
    try_lock = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
    with pg_engine.connect() as other:
        with pg_engine.begin() as conn:
            upgrade(conn)
            assert other.scalar(try_lock, {"key": key}) is False, "the lock is held"
            other.rollback()
        assert other.scalar(try_lock, {"key": key}) is True, "released at commit"
        other.rollback()


def test_alembic_command_line_with_the_shipped_ini(tmp_path: Path) -> None:
    ini = Path(billing.migrate.MIGRATIONS_DIR) / "alembic.ini"
    db = tmp_path / "cli.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ini),
            "-x",
            f"url=sqlite+aiosqlite:///{db}",
            "upgrade",
            "head",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    engine = create_billing_sync_engine(f"sqlite:///{db}")
    try:
        assert set(sa.inspect(engine).get_table_names()) >= BILLING_TABLES
    finally:
        engine.dispose()


# -- exact decimals ---------------------------------------------------------------------------


def test_sqlite_stores_money_as_scaled_integers_and_sums_exactly(sqlite_engine: sa.Engine) -> None:
    meta = sa.MetaData()
    table = sa.Table(
        "t",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", ExactDecimal(38, 9)),
    )
    meta.create_all(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(table.insert(), [{"v": Decimal("0.1")} for _ in range(10)])
        conn.execute(table.insert(), [{"v": Decimal("0.000000001")}, {"v": None}])
    with sqlite_engine.connect() as conn:
        kinds = set(conn.scalars(sa.text("SELECT typeof(v) FROM t WHERE v IS NOT NULL")))
        assert kinds == {"integer"}, "no REAL (binary float) in a money column"
        assert conn.scalar(sa.text("SELECT v FROM t WHERE id = 1")) == 100_000_000
        total = conn.scalar(sa.select(sa.func.sum(table.c.v)))
        assert total == Decimal("1.000000001")
        assert isinstance(total, Decimal)
        assert sum([0.1] * 10) != 1.0  # what a REAL column would have summed to
        assert conn.scalar(sa.select(table.c.v).where(table.c.id == 12)) is None


def test_postgres_money_is_numeric(pg_engine: sa.Engine) -> None:
    _upgrade(pg_engine)
    columns = {c["name"]: c["type"] for c in sa.inspect(pg_engine).get_columns("billing_records")}
    for name, scale in (("usage_amount", 6), ("unit_price", 12), ("charge", 9)):
        column_type = columns[name]
        assert isinstance(column_type, sa.Numeric), name
        assert (column_type.precision, column_type.scale) == (38, scale), name


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.1, TypeError),
        (True, TypeError),
        ("0.1", TypeError),
        (Decimal("0.0000000001"), ValueError),  # 10 places in a 9-place column: not rounded
        (Decimal("NaN"), ValueError),
    ],
)
def test_exact_decimal_refuses_floats_and_silent_rounding(
    sqlite_engine: sa.Engine, value: object, error: type[Exception]
) -> None:
    column_type = ExactDecimal(38, 9)
    with pytest.raises(error):
        column_type.process_bind_param(value, sqlite_engine.dialect)


def test_exact_decimal_reading_an_overflowed_sqlite_value_raises(sqlite_engine: sa.Engine) -> None:
    # SQLite turns an integer overflow in arithmetic into a REAL; reading it must not
    # hand back a rounded balance.
    with pytest.raises(OverflowError):
        ExactDecimal(38, 9).process_result_value(9.3e18, sqlite_engine.dialect)


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "-0",
        "0.000000001",
        "-0.000000001",
        "1801",
        "1801.000000000",
        "1E+3",
        "-12.5",
        "9223372036.854775807",
        "0.1000000000",
    ],
)
def test_the_fast_sqlite_conversion_stores_what_the_bind_processor_stores(
    sqlite_engine: sa.Engine, value: str
) -> None:
    # billing.batch_insert binds values itself through to_sqlite (integer arithmetic);
    # it must store exactly what SQLAlchemy's bind processor would.
    column_type = ExactDecimal(38, 9)
    expected = column_type.process_bind_param(Decimal(value), sqlite_engine.dialect)
    assert column_type.to_sqlite(Decimal(value)) == expected


@pytest.mark.parametrize("value", ["0.0000000001", "NaN", "Infinity", "-1E-10"])
def test_the_fast_sqlite_conversion_refuses_what_it_cannot_store_exactly(value: str) -> None:
    with pytest.raises(ValueError):
        ExactDecimal(38, 9).to_sqlite(Decimal(value))
