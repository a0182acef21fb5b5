"""Add ``usage_outbox_notes``: what the shipper wants ``usage-shipper status`` to show.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_outbox_notes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("since", sa.Double(), nullable=False, comment="first put with this text, Unix s"),
    )


def downgrade() -> None:
    op.drop_table("usage_outbox_notes")
