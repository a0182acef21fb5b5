"""Core statements compiled once per dialect, for the hot paths that run them straight on
the DBAPI cursor.

The write path's inserts and the shipper's claim read run thousands of rows a second.
Going through ``Connection.execute`` re-compiles (or looks up) the statement and processes
every parameter and every result value; the columns involved need no conversion on any
DBAPI, so the SQL text is compiled once here and executed with plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


class DriverStatement(NamedTuple):
    sql: str
    #: Bound values the statement carries itself (e.g. a literal compared in a WHERE).
    defaults: dict[str, Any]
    #: Parameter names in order, for a positional paramstyle (SQLite's ``qmark``);
    #: ``None`` for a named one (psycopg's ``pyformat``), which takes a dict.
    positional_names: tuple[str, ...] | None


# Keyed by id(): the statements are module constants, kept alive by the value's reference.
_cache: dict[tuple[int, type[Dialect], str, tuple[str, ...]], tuple[Any, DriverStatement]] = {}


def driver_statement(
    statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] = ()
) -> DriverStatement:
    """``statement`` compiled for ``dialect``; for an INSERT, ``column_keys`` names the
    columns given (as ``Compiled.column_keys``)."""
    key = (id(statement), type(dialect), str(dialect.paramstyle), tuple(column_keys))
    cached = _cache.get(key)
    if cached is None:
        compiled = cast(
            SQLCompiler,
            statement.compile(dialect=dialect, column_keys=list(column_keys) or None),
        )
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        done = DriverStatement(str(compiled), dict(compiled.params), names)
        cached = _cache[key] = (statement, done)
    return cached[1]


def fetch_all(conn: sa.Connection, statement: sa.Select[Any], values: dict[str, Any]) -> list[Any]:
    """Run a SELECT on the DBAPI cursor and return its plain tuples."""
    sql, defaults, names = driver_statement(statement, conn.dialect)
    params = {**defaults, **values}
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params if names is None else tuple(params[n] for n in names))
        return list(cursor.fetchall())
    finally:
        cursor.close()
