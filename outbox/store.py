"""The only module that names SQL on the outbox table, and on the range in flight the
claim protocol keeps in the lease row (taking and renewing the lease, and the notes for
``usage-shipper status``: :mod:`outbox.leases`).

The write API inserts through :data:`INSERT` and :func:`event_rows`; the shipper and the
operator commands call the functions below, each one short statement (or a few) inside
the caller's transaction. Keeping them here means the claim/ack protocol can be read, and
changed, in one place.

The shipper's claim-and-settle path is plain functions of a sync connection: it runs them
whole in a worker thread (:class:`outbox.transactions.Transactions`), so SQLite's write
lock is held only while they run. The rest (operator commands, the lease) is async.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from outbox.contract import EncodedEvent, UsageEvent, contract_headers
from outbox.driver_sql import fetch_all
from outbox.schema import DEAD, PENDING, SENT, lease_table, outbox_table
from outbox.tracing import TraceContext

_t = outbox_table.c

#: Insert statement for :func:`event_rows`; state, attempts and times take their defaults.
INSERT = outbox_table.insert()


# The contract headers as compact JSON, split around the event id: the same text as
# json.dumps(contract_headers(event_id)) for any UUID event id, built from the one dict.
_HEADERS_HEAD, _HEADERS_TAIL = json.dumps(contract_headers("\x00"), separators=(",", ":")).split(
    "\\u0000"
)


def stored_headers(event_id: str) -> str:
    """The ``headers`` column as the write API stores it: the contract headers as compact
    JSON. Put together from two constant halves rather than ``json.dumps``-ed per row
    because the shipper compares every row against it."""
    return f"{_HEADERS_HEAD}{event_id}{_HEADERS_TAIL}"


def _headers_column(event_id: str, trace: TraceContext | None) -> str:
    if trace is None:
        return stored_headers(event_id)
    # Encoded the ordinary way; the shipper parses these (its fast path, one string
    # comparison, is for the untraced text above).
    return json.dumps(contract_headers(event_id, trace), separators=(",", ":"))


#: The columns the write API fills, in the order of the tuples below.
ROW_COLUMNS = ("event_id", "subject", "headers", "payload", "created_at")
#: One outbox row's values, in :data:`ROW_COLUMNS` order.
RowValues = tuple[str, str, str, bytes, float]


def event_values(event: UsageEvent) -> RowValues:
    """The row of one validated event, for :data:`INSERT` with :data:`ROW_COLUMNS`."""
    return (
        event.event_id,
        event.subject,
        _headers_column(event.event_id, event.trace),
        event.payload,
        event.created_at,
    )


def batch_values(events: Iterable[EncodedEvent]) -> list[RowValues]:
    """The rows of a batch (:func:`outbox.contract.build_usage_events`): plain tuples,
    what a DBAPI ``executemany`` takes as they are."""
    return [
        (event_id, subject, _headers_column(event_id, trace), payload, created_at)
        for event_id, subject, payload, created_at, trace in events
    ]


def event_rows(events: Iterable[UsageEvent]) -> list[dict[str, Any]]:
    """Outbox rows for validated events, ready for ``connection.execute(INSERT, rows)``."""
    return [
        {
            "event_id": e.event_id,
            "subject": e.subject,
            "headers": _headers_column(e.event_id, e.trace),
            "payload": e.payload,
            "created_at": e.created_at,
        }
        for e in events
    ]


class OutboxRow(NamedTuple):
    """A claimed row, as the shipper publishes it. A named tuple: the shipper builds
    thousands a second straight from DBAPI tuples (a frozen dataclass costs ~4x more)."""

    id: int
    event_id: str
    subject: str
    headers: str  # JSON text; decoded by the shipper so a bad row fails there, per row
    payload: bytes
    created_at: float
    attempts: int  # attempts started before this claim


@dataclass(frozen=True, slots=True)
class Failure:
    """A row that failed to publish: retried at ``retry_at`` or, if ``dead``, parked."""

    id: int
    reason: str
    retry_at: float = 0.0


_SELECT_DUE = (
    sa.select(_t.id, _t.event_id, _t.subject, _t.headers, _t.payload, _t.created_at, _t.attempts)
    .where(
        _t.state == PENDING,
        _t.next_attempt_at <= sa.bindparam("now"),
        _t.id > sa.bindparam("after"),
    )
    .order_by(_t.id)
    .limit(sa.bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class Claim:
    rows: list[OutboxRow]  # to publish now, in order
    buried: list[OutboxRow]  # moved to dead: every attempt they were given started, none acked
    more: bool  # more due rows may follow (the limit was reached or the batch was cut short)


def _exhausted_reason(max_attempts: int) -> sa.ColumnElement[str]:
    return sa.func.coalesce(_t.last_error, "the shipper stopped while publishing this row").concat(
        f" (gave up after {max_attempts} attempts)"
    )


def suspect_batch_limit(limit: int, attempts: int) -> int:
    """How many rows may share a batch with a row that already had ``attempts`` attempts.

    A row in flight when the shipper died once is most likely innocent (a deploy, an OOM
    kill), so it rides in a full batch; each further failed attempt quarters the batch it
    may share, so a row that really does crash the shipper ends up alone, reaches
    ``max_attempts`` and goes to ``dead`` without taking its neighbours along.
    """
    return max(1, limit >> (2 * max(0, attempts - 1)))  # limit / 4^(attempts-1)


def due_rows(conn: sa.Connection, *, now: float, limit: int, after: int = 0) -> list[OutboxRow]:
    """The next ``limit`` due rows with ``id > after``, in order: a plain read.

    The shipper runs it outside the write lock (in WAL mode a read blocks no writer), and
    needs no lock for it: only the lease holder changes a pending row, so what it read is
    still pending when it records the claim with :func:`set_in_flight`.
    """
    # Plain tuples from the DBAPI cursor: for thousands of rows a second, SQLAlchemy's
    # result rows cost more than the query.
    rows = fetch_all(conn, _SELECT_DUE, {"now": now, "limit": limit, "after": after})
    return list(map(OutboxRow._make, rows))


def plan_claim(candidates: Sequence[OutboxRow], *, limit: int, max_attempts: int) -> Claim:
    """Split due rows (in id order, as :func:`due_rows` returns them) into the batch to
    publish now and the rows out of attempts; :func:`bury` writes the latter."""
    more = len(candidates) >= limit
    if not any(row.attempts for row in candidates):  # the usual case: no row failed before
        return Claim(list(candidates[:limit]), [], more)
    buried = [row for row in candidates if row.attempts >= max_attempts]
    batch: list[OutboxRow] = []
    most_attempts = 0
    for row in candidates:
        if row.attempts >= max_attempts:
            continue
        most_attempts = max(most_attempts, row.attempts)
        if len(batch) >= suspect_batch_limit(limit, most_attempts):
            more = True
            break
        batch.append(row)
    return Claim(batch, buried, more)


def bury(conn: sa.Connection, rows: Sequence[OutboxRow], *, max_attempts: int) -> None:
    """Move rows that used up their attempts to ``dead``, keeping their last error."""
    if rows:
        conn.execute(
            sa.update(outbox_table)
            .where(_t.id.in_([row.id for row in rows]), _t.state == PENDING)
            .values(state=DEAD, last_error=_exhausted_reason(max_attempts))
        )


def set_in_flight(
    conn: sa.Connection,
    *,
    name: str,
    owner: str,
    span: tuple[int, int] | None,
    renew_until: float | None = None,
) -> bool:
    """Record the id range claimed and not yet settled (None once all is settled), and
    with ``renew_until`` extend the lease to then. One statement that also checks the
    lease: False when ``owner`` no longer holds it (nothing is written then)."""
    first, last = span if span is not None else (None, None)
    values: dict[str, Any] = {"in_flight_from": first, "in_flight_to": last}
    if renew_until is not None:
        values["expires_at"] = renew_until
    result = conn.execute(
        sa.update(lease_table)
        .where(lease_table.c.name == name, lease_table.c.owner == owner)
        .values(**values)
    )
    return bool(result.rowcount)


def recover_in_flight(conn: sa.Connection, *, name: str) -> int:
    """After taking the lease: if the previous holder died with rows in flight, count an
    attempt started on each of them. Returns the number of rows counted."""
    span = (
        conn.execute(
            sa.select(lease_table.c.in_flight_from, lease_table.c.in_flight_to).where(
                lease_table.c.name == name
            )
        )
    ).first()
    if span is None or span[0] is None:
        return 0
    result = conn.execute(
        sa.update(outbox_table)
        .where(_t.id.between(span[0], span[1]), _t.state == PENDING)
        .values(attempts=_t.attempts + 1)
    )
    conn.execute(
        sa.update(lease_table)
        .where(lease_table.c.name == name)
        .values(in_flight_from=None, in_flight_to=None)
    )
    return result.rowcount or 0


def _id_run(ids: Sequence[int]) -> tuple[int, int] | None:
    """``(first, last)`` when ``ids`` are a run of consecutive ids (the usual batch), else
    None."""
    first, last = min(ids), max(ids)
    return (first, last) if last - first + 1 == len(ids) == len(set(ids)) else None


def _ids_in(ids: Sequence[int]) -> sa.ColumnElement[bool]:
    # A batch is usually a run of consecutive ids: a range is far cheaper to compile and
    # run than an IN list of a thousand parameters.
    run = _id_run(ids)
    return _t.id.between(*run) if run is not None else _t.id.in_(ids)


def delete_sent(conn: sa.Connection, ids: Sequence[int]) -> int:
    """Remove rows JetStream acknowledged. Only ever called with acknowledged ids."""
    if not ids:
        return 0
    run = _id_run(ids)
    if run is not None:
        # The usual case, a run of ids, as one textual statement: a tenth less time per
        # settle transaction than the Core DELETE (measured), and the shipper runs one
        # per 100 acknowledged rows, on its critical path.
        result = conn.execute(_DELETE_RUN, {"first": run[0], "last": run[1]})
    else:  # not a run (_id_run said so): the IN list
        result = conn.execute(sa.delete(outbox_table).where(_t.id.in_(ids)))
    return result.rowcount or 0


_DELETE_RUN = sa.text(f"DELETE FROM {outbox_table.name} WHERE id BETWEEN :first AND :last")


def mark_sent(conn: sa.Connection, ids: Sequence[int], *, now: float) -> int:
    """Keep acknowledged rows as ``sent`` (for audit) instead of deleting them at once;
    :func:`delete_sent_before` removes them later. Only ever called with acknowledged ids."""
    if not ids:
        return 0
    result = conn.execute(
        sa.update(outbox_table).where(_ids_in(ids)).values(state=SENT, sent_at=now)
    )
    return result.rowcount or 0


def delete_sent_before(conn: sa.Connection, *, before: float, limit: int) -> int:
    """Delete at most ``limit`` ``sent`` rows acknowledged before ``before``, oldest ids
    first. Small batches keep each write transaction (and writers' waits) short; the
    subquery walks the ``(state, id)`` index, never the whole table."""
    oldest = (
        sa.select(_t.id)
        .where(_t.state == SENT, _t.sent_at < before)
        .order_by(_t.id)
        .limit(limit)
        .scalar_subquery()
    )
    result = conn.execute(sa.delete(outbox_table).where(_t.id.in_(oldest)))
    return result.rowcount or 0


async def purge_dead(conn: AsyncConnection, *, before: float, dry_run: bool = False) -> int:
    """Delete dead rows written (``created_at``) before ``before``; with ``dry_run`` only
    count them. Returns the number of rows (to be) deleted."""
    where = sa.and_(_t.state == DEAD, _t.created_at < before)
    if dry_run:
        return (await conn.scalar(sa.select(sa.func.count()).where(where))) or 0
    result = await conn.execute(sa.delete(outbox_table).where(where))
    return result.rowcount or 0


def retry_later(conn: sa.Connection, failures: Sequence[Failure]) -> None:
    """Record a per-row failure: one more attempt counted, and the row waits its backoff."""
    if failures:
        conn.execute(
            sa.update(outbox_table)
            .where(_t.id == sa.bindparam("row_id"))
            .values(
                attempts=_t.attempts + 1,
                last_error=sa.bindparam("reason"),
                next_attempt_at=sa.bindparam("at"),
            ),
            [{"row_id": f.id, "reason": f.reason, "at": f.retry_at} for f in failures],
        )


def mark_dead(conn: sa.Connection, failures: Sequence[Failure]) -> None:
    """Park rows that can never be sent, with the reason; they stay until requeued."""
    if failures:
        conn.execute(
            sa.update(outbox_table)
            .where(_t.id == sa.bindparam("row_id"))
            .values(state=DEAD, last_error=sa.bindparam("reason")),
            [{"row_id": f.id, "reason": f.reason} for f in failures],
        )


async def requeue_dead(conn: AsyncConnection, ids: Sequence[int] | None) -> int:
    """Give dead rows (all of them when ``ids`` is None) a fresh set of attempts."""
    statement = (
        sa.update(outbox_table)
        .where(_t.state == DEAD)
        .values(state=PENDING, attempts=0, next_attempt_at=0)
    )
    if ids is not None:
        statement = statement.where(_t.id.in_(ids))
    result = await conn.execute(statement)
    return result.rowcount or 0


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    dead: int
    oldest_pending_at: float | None
    last_error: str | None
    sent: int = 0  # acknowledged rows kept for audit (--keep-sent-hours)


async def status(conn: AsyncConnection) -> OutboxStatus:
    by_state = await conn.execute(sa.select(_t.state, sa.func.count()).group_by(_t.state))
    counts: dict[str, int] = {state: count for state, count in by_state}
    oldest = await conn.scalar(sa.select(sa.func.min(_t.created_at)).where(_t.state == PENDING))
    last_error = await conn.scalar(
        sa.select(_t.last_error).where(_t.last_error.is_not(None)).order_by(_t.id.desc()).limit(1)
    )
    return OutboxStatus(
        pending=counts.get(PENDING, 0),
        dead=counts.get(DEAD, 0),
        oldest_pending_at=oldest,
        last_error=last_error,
        sent=counts.get(SENT, 0),
    )


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    dead: int
    oldest_pending_at: float | None  # created_at of the first pending row in id order


async def backlog(conn: AsyncConnection) -> Backlog:
    """The numbers a metrics scrape reads, at a cost it can afford on a large backlog.

    Every query walks the ``(state, id)`` index only: the counts scan it (about 40 ms per
    million pending rows on SQLite), the oldest pending row is its first entry. That is
    why the oldest row is found by id, not by ``min(created_at)`` (a scan of the table,
    ~10x slower): ids follow write order, so it is the oldest row up to clock skew
    between writers. :func:`status` also finds the last error, another table scan.
    """
    pending = await conn.scalar(sa.select(sa.func.count()).where(_t.state == PENDING))
    dead = await conn.scalar(sa.select(sa.func.count()).where(_t.state == DEAD))
    oldest = await conn.scalar(
        sa.select(_t.created_at).where(_t.state == PENDING).order_by(_t.id).limit(1)
    )
    return Backlog(pending=pending or 0, dead=dead or 0, oldest_pending_at=oldest)


@dataclass(frozen=True, slots=True)
class DeadRow:
    id: int
    event_id: str
    subject: str
    attempts: int
    created_at: float
    last_error: str | None


async def dead_rows(conn: AsyncConnection, *, limit: int) -> list[DeadRow]:
    result = await conn.execute(
        sa.select(_t.id, _t.event_id, _t.subject, _t.attempts, _t.created_at, _t.last_error)
        .where(_t.state == DEAD)
        .order_by(_t.id)
        .limit(limit)
    )
    return [DeadRow(*row) for row in result]
