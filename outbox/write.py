"""The write API: record usage events inside the caller's own transaction.

These functions add rows to the caller's open transaction and never commit, roll back or
open a network connection: if the caller commits, the events are durable with its data;
if it rolls back, they are gone with it. Validation happens before anything is written,
so a refused event (:class:`~outbox.errors.InvalidUsageEvent`) leaves the table unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from operator import itemgetter
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from outbox import store
from outbox.contract import DEFAULT_MAX_PAYLOAD_BYTES, build_usage_event, build_usage_events
from outbox.driver_sql import driver_statement
from outbox.errors import MissingOutboxTable
from outbox.store import RowValues


class UsageArgs(TypedDict):
    """One usage event's arguments: the keywords of :func:`record_usage` and
    :meth:`outbox.Outbox.record`, and one item of the batch forms. The contract
    (``docs/usage-event.md``) says what each means and what is refused."""

    user_id: str
    product_id: str
    provider: str
    operation: str
    service_type: str | Enum
    input_tokens: NotRequired[int | None]
    output_tokens: NotRequired[int | None]
    input_units: NotRequired[float | None]
    output_units: NotRequired[float | None]
    metadata: NotRequired[Mapping[str, Any] | None]
    #: Contract 1.1: ids the platform's billing reads at the payload's top level (each a
    #: non-empty string of at most 255 characters; also lifted from ``metadata``).
    organization_id: NotRequired[str | None]
    subscription_id: NotRequired[str | None]
    session_id: NotRequired[str | None]
    request_id: NotRequired[str | None]
    agent_id: NotRequired[str | None]
    #: W3C Trace Context to publish as headers; default: the active OpenTelemetry span's.
    traceparent: NotRequired[str | None]
    tracestate: NotRequired[str | None]


def _sync_connection(target: Session | Connection) -> Connection:
    # Session.connection() joins (or begins) the session's transaction; it never commits.
    return target.connection() if isinstance(target, Session) else target


Rows = RowValues | list[RowValues]


def _insert_sync(target: Session | Connection, rows: Rows) -> None:
    """Insert outbox rows (tuples in ``store.ROW_COLUMNS`` order) at the DBAPI level:
    ``store.INSERT`` compiled once for the connection's dialect, then
    ``cursor.execute``/``executemany`` through ``exec_driver_sql``, on the caller's
    connection and so in the caller's transaction. Going through ``Connection.execute``
    instead re-processes every parameter of every row (about 2 us a row, a tenth of the
    batch form's budget). The values need no conversion: text, bytes and floats are what
    every DBAPI takes."""
    connection = _sync_connection(target)
    sql, _, names = driver_statement(store.INSERT, connection.dialect, store.ROW_COLUMNS)
    parameters: Any = rows
    if names is None:  # a named paramstyle (psycopg's pyformat) takes dicts
        parameters = (
            dict(zip(store.ROW_COLUMNS, rows, strict=True))
            if isinstance(rows, tuple)
            else [dict(zip(store.ROW_COLUMNS, row, strict=True)) for row in rows]
        )
    elif names != store.ROW_COLUMNS:  # positional, another order (SQLite keeps ours)
        order = itemgetter(*(store.ROW_COLUMNS.index(name) for name in names))
        parameters = order(rows) if isinstance(rows, tuple) else list(map(order, rows))
    try:
        connection.exec_driver_sql(sql, parameters)
    except (OperationalError, ProgrammingError) as exc:
        # "no such table: usage_outbox" (SQLite), 'relation "usage_outbox" does not
        # exist' (PostgreSQL): say how the table comes to exist.
        text = str(exc.orig)
        if "no such table" in text or ("does not exist" in text and "usage_outbox" in text):
            raise MissingOutboxTable() from exc
        raise


async def _insert(target: AsyncSession | AsyncConnection, rows: Rows) -> None:
    # One hop into SQLAlchemy's sync world (for a session, awaiting connection() and then
    # execute() would cost two); a single row goes as a plain execute, a list as
    # executemany.
    await target.run_sync(_insert_sync, rows)


def _build_all(
    events: Iterable[Mapping[str, Any]], max_payload_bytes: int
) -> tuple[list[str], list[RowValues]]:
    # All events are validated before any is written: one bad event refuses the batch.
    built = build_usage_events(events, max_payload_bytes=max_payload_bytes)
    return [event[0] for event in built], store.batch_values(built)


async def record_usage(
    session_or_connection: AsyncSession | AsyncConnection,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **usage: Unpack[UsageArgs],
) -> str:
    """Validate one usage event and add it to the caller's transaction; return its id."""
    event = build_usage_event(**usage, max_payload_bytes=max_payload_bytes)
    await _insert(session_or_connection, store.event_values(event))
    return event.event_id


def record_usage_sync(
    session_or_connection: Session | Connection,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **usage: Unpack[UsageArgs],
) -> str:
    """The same as :func:`record_usage` for a sync ``Session`` or ``Connection``."""
    event = build_usage_event(**usage, max_payload_bytes=max_payload_bytes)
    _insert_sync(session_or_connection, store.event_values(event))
    return event.event_id


async def record_usages(
    session_or_connection: AsyncSession | AsyncConnection,
    events: Iterable[UsageArgs | Mapping[str, Any]],
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> list[str]:
    """Batch form: validate every event, then insert them all in one ``executemany``.
    The events of one call are one write: they share its instant (``timestamp``) and
    the active span's trace context, read once."""
    ids, rows = _build_all(events, max_payload_bytes)
    if rows:
        await _insert(session_or_connection, rows)
    return ids


def record_usages_sync(
    session_or_connection: Session | Connection,
    events: Iterable[UsageArgs | Mapping[str, Any]],
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> list[str]:
    """Batch form of :func:`record_usage_sync`."""
    ids, rows = _build_all(events, max_payload_bytes)
    if rows:
        _insert_sync(session_or_connection, rows)
    return ids
