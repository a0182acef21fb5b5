"""The SQL of the two small tables beside the outbox: the shipper's lease (one shipper
drains a file at a time) and the notes it leaves for ``usage-shipper status``.

Plain functions of a sync connection: the shipper runs each transaction whole in one
thread behind the outbox's write lock file (:class:`outbox.transactions.Transactions`),
not statement by statement across event-loop turns with SQLite's write lock held
meanwhile; async callers use ``AsyncConnection.run_sync``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from outbox.schema import lease_table, notes_table

# -- the shipper lease -------------------------------------------------------------------


def take_lease(conn: sa.Connection, *, name: str, owner: str, now: float, ttl: float) -> bool:
    """Take or renew the lease when free, expired or already ours; False when another
    live shipper holds it."""
    result = conn.execute(
        sa.update(lease_table)
        .where(
            lease_table.c.name == name,
            sa.or_(lease_table.c.owner == owner, lease_table.c.expires_at < now),
        )
        .values(owner=owner, expires_at=now + ttl)
    )
    if result.rowcount:
        return True
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(lease_table).values(name=name, owner=owner, expires_at=now + ttl)
            )
    except IntegrityError:
        return False
    return True


def take_over_lease(
    conn: sa.Connection, *, name: str, owner: str, previous: str, now: float, ttl: float
) -> bool:
    """Take the lease from ``previous`` before it expires (its holder is known to be
    gone); False when someone else holds it by now. The in-flight range stays, for
    :func:`recover_in_flight`."""
    result = conn.execute(
        sa.update(lease_table)
        .where(lease_table.c.name == name, lease_table.c.owner == previous)
        .values(owner=owner, expires_at=now + ttl)
    )
    return bool(result.rowcount)


def lease_holder(conn: sa.Connection, *, name: str) -> tuple[str, float] | None:
    row = (
        conn.execute(
            sa.select(lease_table.c.owner, lease_table.c.expires_at).where(
                lease_table.c.name == name
            )
        )
    ).first()
    return None if row is None else (row.owner, row.expires_at)


def drop_lease(conn: sa.Connection, *, name: str, owner: str) -> None:
    conn.execute(
        sa.delete(lease_table).where(lease_table.c.name == name, lease_table.c.owner == owner)
    )


# -- notes: what the shipper tells `usage-shipper status` ---------------------------------


def put_note(conn: sa.Connection, name: str, text: str, *, now: float) -> None:
    """Set note ``name`` to ``text``; ``since`` stays when the text is unchanged."""
    n = notes_table.c
    changed = conn.execute(
        sa.update(notes_table).where(n.name == name, n.text != text).values(text=text, since=now)
    )
    if changed.rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(notes_table).values(name=name, text=text, since=now))
    except IntegrityError:
        pass  # already there with this text


def clear_note(conn: sa.Connection, name: str) -> None:
    conn.execute(sa.delete(notes_table).where(notes_table.c.name == name))


def read_notes(conn: sa.Connection) -> dict[str, tuple[str, float]]:
    """Every note: name -> (text, since in Unix seconds)."""
    n = notes_table.c
    result = conn.execute(sa.select(n.name, n.text, n.since).order_by(n.name))
    return {name: (text, since) for name, text, since in result}
