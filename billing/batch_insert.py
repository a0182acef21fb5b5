"""A batch of rows inserted in one statement handed straight to the driver, per dialect.

Measured while profiling the consumer on SQLite: a third of its time went to SQLAlchemy
processing every parameter of every row ("insertmanyvalues": a bind processor call per
value, ``construct_params`` per page). The rows here skip that:

* **PostgreSQL**: the rows as one JSON parameter, ``INSERT ... SELECT ... FROM
  json_populate_recordset(...)`` (:mod:`billing.pg_json`): the SQL text never changes and
  there is one parameter whatever the batch size.
* **SQLite**: one multi-row ``INSERT ... VALUES (?, ...), (?, ...) ... tail`` per
  :data:`CHUNK` rows through ``exec_driver_sql``, the values already in their stored form
  (an :class:`~billing.types.ExactDecimal` as its scaled integer, a ``DateTime`` as the
  text SQLAlchemy's SQLite dialect writes and reads), converted by one function per
  column. The text depends only on the row count, so full batches reuse sqlite3's
  statement cache.

``tail`` is SQL text shared by both dialects: ``ON CONFLICT ...`` and/or ``RETURNING
column``; with ``RETURNING`` the returned values come back as a list.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa

from billing import pg_json
from billing.items import naive_utc_text
from billing.types import ExactDecimal

#: Rows per SQLite statement: at ~20 columns, well under its 32,766 bound parameters.
CHUNK: Final = 500

Convert = Callable[[Any], Any]


@functools.cache
def _sqlite_converters(
    table: sa.Table, columns: tuple[str, ...]
) -> tuple[tuple[int, Convert], ...]:
    """``(position, converter)`` for the columns whose values SQLite stores differently."""
    converters: list[tuple[int, Convert]] = []
    for position, name in enumerate(columns):
        kind = table.c[name].type
        if isinstance(kind, ExactDecimal):
            converters.append((position, kind.to_sqlite))
        elif isinstance(kind, sa.DateTime):
            converters.append((position, naive_utc_text))
    return tuple(converters)


@functools.cache
def _nullable(table: sa.Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    # Only columns with no default: left out of the INSERT, they are NULL.
    return tuple(
        name
        for name in columns
        if table.c[name].nullable
        and table.c[name].default is None
        and table.c[name].server_default is None
    )


def _present_columns(
    table: sa.Table, columns: tuple[str, ...], chunk: Sequence[dict[str, Any]]
) -> tuple[str, ...]:
    """``columns`` without the nullable ones that are None in every row of ``chunk``: they
    are left to default to NULL. sqlite3 binds a None through its adaptation protocol (two
    attribute lookups that fail: about 0.2 us each), and most records carry none of the
    optional top-level ids: a column per id, NULL in nearly every row."""
    empty = [
        name
        for name in _nullable(table, columns)
        if list(map(operator.itemgetter(name), chunk)).count(None) == len(chunk)
    ]
    return tuple(name for name in columns if name not in empty) if empty else columns


@functools.cache
def _sqlite_statement(table: sa.Table, columns: tuple[str, ...], rows: int, tail: str) -> str:
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)} {tail}"
    )


def insert_rows(
    conn: sa.Connection,
    table: sa.Table,
    columns: tuple[str, ...],
    rows: Sequence[dict[str, Any]],
    tail: str = "",
) -> list[Any]:
    """Insert ``rows`` (each a dict holding ``columns``) in the caller's transaction, in
    their order; return what ``tail``'s ``RETURNING`` gave (else ``[]``).

    Synchronous, as all of a batch's statements are: an async caller runs them with
    ``AsyncConnection.run_sync`` (see :mod:`billing.apply` for why)."""
    if not rows:
        return []
    returning = "RETURNING" in tail
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statement = pg_json.insert_statement(table, columns, tail)
        result = conn.execute(statement, pg_json.parameters(table, rows, columns))
        return list(result.scalars()) if returning else []
    if dialect != "sqlite":
        raise NotImplementedError(f"billing supports SQLite and PostgreSQL, not {dialect}")
    returned: list[Any] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        present = _present_columns(table, columns, chunk)
        converters = _sqlite_converters(table, present)
        pick = operator.itemgetter(*present)
        values: list[Any] = []
        for row in chunk:
            row_values = list(pick(row)) if len(present) > 1 else [pick(row)]
            for position, convert in converters:
                row_values[position] = convert(row_values[position])
            values.extend(row_values)
        sql = _sqlite_statement(table, present, len(chunk), tail)
        result = conn.exec_driver_sql(sql, tuple(values))
        if returning:
            returned.extend(result.scalars())
    return returned
