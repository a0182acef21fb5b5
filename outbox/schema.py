"""The outbox table, as SQLAlchemy Core objects a service can import into its own migrations.

A service that keeps the outbox inside its own database adds ``outbox.schema.metadata``
to its alembic ``target_metadata`` (or copies the table into its own migration); a
standalone outbox file is created by this project's migrations (``outbox/migrations``).

Times are Unix seconds in a double column: portable between SQLite and PostgreSQL, cheap
to compare in the claim query, and free of the string round-trips SQLite's DATETIME needs.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

PENDING: Final = "pending"
DEAD: Final = "dead"
#: Acknowledged by JetStream and kept for audit (``--keep-sent-hours``); deleted later.
SENT: Final = "sent"

metadata = sa.MetaData()

# SQLite only makes INTEGER PRIMARY KEY the rowid alias (append-only, no extra index);
# PostgreSQL gets a BIGINT identity.
_ordering_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

outbox_table = sa.Table(
    "usage_outbox",
    metadata,
    sa.Column(
        "id",
        _ordering_key,
        primary_key=True,
        autoincrement=True,
        comment="ordering key: rows are shipped in this order",
    ),
    sa.Column(
        "event_id",
        sa.String(36),
        nullable=False,
        comment="UUIDv7, the idempotency key (Nats-Msg-Id) end to end",
    ),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("headers", sa.Text(), nullable=False, comment="JSON object of NATS headers"),
    sa.Column("payload", sa.LargeBinary(), nullable=False, comment="the exact bytes published"),
    sa.Column("created_at", sa.Double(), nullable=False, comment="write time, Unix seconds"),
    sa.Column(
        "state", sa.String(16), nullable=False, server_default=PENDING, comment="pending or dead"
    ),
    sa.Column(
        "attempts",
        sa.Integer(),
        nullable=False,
        server_default="0",
        comment="publish attempts started and not ended by an ack",
    ),
    sa.Column(
        "next_attempt_at",
        sa.Double(),
        nullable=False,
        server_default="0",
        comment="Unix seconds; a row is due when this is in the past",
    ),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column(
        "sent_at",
        sa.Double(),
        nullable=True,
        comment="PubAck time, Unix seconds, for rows kept as sent",
    ),
    sa.UniqueConstraint("event_id", name="uq_usage_outbox_event_id"),
    sa.Index("ix_usage_outbox_state_id", "state", "id"),
)

# One row per outbox: which shipper may claim rows, until when. SQLite has no
# SELECT ... FOR UPDATE SKIP LOCKED, so a lease is how two shippers are kept apart.
lease_table = sa.Table(
    "usage_outbox_lease",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
    # The id range the holder has claimed and not yet settled. A new holder that finds it
    # set knows the previous one died mid-publish, and counts an attempt on those rows:
    # attempts are counted as started without writing every claimed row.
    sa.Column("in_flight_from", sa.BigInteger(), nullable=True),
    sa.Column("in_flight_to", sa.BigInteger(), nullable=True),
)

# What the shipper wants an operator to see and cannot say in a log line alone: a stream
# whose limits can discard unread events, the problem it is waiting out. One row per
# topic; `usage-shipper status` prints them, reading only (it works on a read-only file).
notes_table = sa.Table(
    "usage_outbox_notes",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("since", sa.Double(), nullable=False, comment="first put with this text, Unix s"),
)

#: alembic's version table for this project's history, apart from a host service's own.
VERSION_TABLE: Final = "usage_outbox_alembic_version"
