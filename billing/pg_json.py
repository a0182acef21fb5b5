"""PostgreSQL: a batch of rows inserted as one statement over one JSON parameter.

Measured while profiling the consumer on PostgreSQL: psycopg runs ``executemany()`` as
one protocol message per row, and a multi-row ``VALUES`` statement of 256 rows has
thousands of placeholders that psycopg parses again for every batch. One array per
column (``unnest``, this module's first form) fixed both, but psycopg adapts a list in
Python, value by value: that was then over half of the consumer's time. Here the whole
batch is one JSON text made by ``json.dumps`` (C) and the server takes it apart
(``json_populate_recordset``, typed by the table's own row type): the SQL text never
changes, so it is parsed and prepared once, and there is one parameter whatever the
batch size.

``WITH ORDINALITY ... ORDER BY`` inserts the rows in the caller's order: the wallets'
lock order, which keeps concurrent consumers from deadlocking, depends on it.

The values are what the columns hold (``Decimal`` already quantized, naive UTC
``datetime``, ``str``, ``int``, ``bytes``); each is written as the text PostgreSQL's input
function for the column reads back exactly (a ``Decimal`` as its string, never a float).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from billing.items import naive_utc_text
from billing.types import ExactDecimal

Convert = Callable[[Any], Any]


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _bytea_text(value: bytes | None) -> str | None:
    return None if value is None else "\\x" + value.hex()


@functools.cache
def _converters(table: sa.Table, columns: tuple[str, ...]) -> tuple[tuple[str, Convert], ...]:
    """``(column, converter)`` for the columns whose values JSON cannot carry as they are."""
    converters: list[tuple[str, Convert]] = []
    for name in columns:
        kind = table.c[name].type
        if isinstance(kind, ExactDecimal | sa.Numeric):
            converters.append((name, _decimal_text))
        elif isinstance(kind, sa.DateTime):
            converters.append((name, naive_utc_text))
        elif isinstance(kind, sa.LargeBinary):
            converters.append((name, _bytea_text))
        elif not isinstance(kind, sa.Integer | sa.String):  # Text is a String
            raise TypeError(f"no JSON form for {name} ({kind!r})")
    return tuple(converters)


@functools.cache
def insert_statement(table: sa.Table, columns: tuple[str, ...], tail: str = "") -> sa.TextClause:
    """``INSERT INTO table (columns) SELECT ... FROM json_populate_recordset(:rows) ...
    tail`` (``tail``: an ``ON CONFLICT`` and/or ``RETURNING`` clause, as SQL text)."""
    names = ", ".join(columns)
    return sa.text(
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM "
        f"({select_rows(table, columns)}) AS batch ORDER BY batch_order {tail}"
    )


def select_rows(table: sa.Table, columns: tuple[str, ...]) -> str:
    """``SELECT columns, batch_order FROM`` the ``:rows`` parameter, typed by the table."""
    _converters(table, columns)  # refuse a column type with no JSON form here, not later
    picked = ", ".join(f"typed.{name}" for name in columns)
    return (
        f"SELECT {picked}, typed.ordinality AS batch_order FROM "
        f"json_populate_recordset(NULL::{table.name}, CAST(:rows AS json)) "
        "WITH ORDINALITY AS typed"
    )


def parameters(
    table: sa.Table, rows: Sequence[dict[str, Any]], columns: tuple[str, ...]
) -> dict[str, str]:
    """The statement's one parameter: the rows as a JSON array of objects, in row order
    (keys that are not among ``columns`` are ignored by the statement)."""
    converters = _converters(table, columns)
    documents = []
    for row in rows:
        document = row.copy()
        for name, convert in converters:
            document[name] = convert(document[name])
        documents.append(document)
    return {"rows": json.dumps(documents, ensure_ascii=False, separators=(",", ":"))}
