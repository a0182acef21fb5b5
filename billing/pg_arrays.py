"""PostgreSQL: a batch of rows inserted as one statement over column arrays (``unnest``).

Measured while profiling the consumer on PostgreSQL: psycopg runs ``executemany()`` as
one protocol message per row, and a multi-row ``VALUES`` statement of 256 rows has
thousands of placeholders that psycopg parses again for every batch (its query cache
keeps short statements only); together most of the consumer's time. With one array per
column the SQL text never changes (so it is parsed and prepared once), there are a dozen
parameters whatever the batch size, and psycopg adapts each list in one go.

``WITH ORDINALITY ... ORDER BY`` inserts the rows in the caller's order: the wallets'
lock order, which keeps concurrent consumers from deadlocking, depends on it.

The values go to the driver as they are (no SQLAlchemy type processing): the callers pass
what the columns hold (``Decimal`` already quantized, naive UTC ``datetime``, ``str``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from billing.types import ExactDecimal


def _array_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, ExactDecimal):
        return "numeric[]"
    if isinstance(kind, sa.DateTime):
        return "timestamp[]"
    if isinstance(kind, sa.Integer):
        return "bigint[]"
    if isinstance(kind, sa.LargeBinary):
        return "bytea[]"
    if isinstance(kind, sa.String):  # also Text
        return "text[]"
    raise TypeError(f"no array type for {column.name} ({kind!r})")


@functools.cache
def insert_statement(table: sa.Table, columns: tuple[str, ...], tail: str = "") -> sa.TextClause:
    """``INSERT INTO table (columns) SELECT ... FROM unnest(:column arrays) ... tail``
    (``tail``: an ``ON CONFLICT`` and/or ``RETURNING`` clause, as SQL text)."""
    names = ", ".join(columns)
    arrays = ", ".join(f"CAST(:{name} AS {_array_type(table.c[name])})" for name in columns)
    return sa.text(
        f"INSERT INTO {table.name} ({names}) "
        f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS batch({names}, batch_order) "
        f"ORDER BY batch_order {tail}"
    )


def parameters(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """The rows as one list per column, in row order."""
    return {name: [row.get(name) for row in rows] for name in columns}
