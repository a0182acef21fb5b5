"""Create the usage outbox table and the shipper lease table.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = ("usage_outbox",)
depends_on = None

_ordering_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_outbox",
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
            "state",
            sa.String(16),
            nullable=False,
            server_default="pending",
            comment="pending or dead",
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
        sa.UniqueConstraint("event_id", name="uq_usage_outbox_event_id"),
    )
    op.create_index("ix_usage_outbox_state_id", "usage_outbox", ["state", "id"])
    op.create_table(
        "usage_outbox_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("in_flight_from", sa.BigInteger(), nullable=True),
        sa.Column("in_flight_to", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("usage_outbox_lease")
    op.drop_index("ix_usage_outbox_state_id", table_name="usage_outbox")
    op.drop_table("usage_outbox")
