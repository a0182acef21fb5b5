"""Add ``sent_at``: acknowledged rows kept as ``sent`` for audit (``--keep-sent-hours``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

An existing SQLite file is not converted to ``auto_vacuum=INCREMENTAL`` here: that needs a
full ``VACUUM``, which cannot run inside the migration's transaction and rewrites the whole
file while holding the write lock. See docs/retention.md for the one-time step.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_outbox") as batch:
        batch.add_column(
            sa.Column(
                "sent_at",
                sa.Double(),
                nullable=True,
                comment="PubAck time, Unix seconds, for rows kept as sent",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_outbox") as batch:
        batch.drop_column("sent_at")
