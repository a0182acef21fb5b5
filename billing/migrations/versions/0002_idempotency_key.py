"""Add ``billing_records.idempotency_key``: the key billing de-duplicates on.

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-12-01

Contract 1.1 gives every payload an ``idempotency_key`` and the platform's real billing
de-duplicates on it (else on the event id). Rows recorded before this revision were
de-duplicated on ``event_id``; their key is that id, which is also what a redelivery of
one of their (1.0) payloads is keyed on, so no event can be billed twice across it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("billing_records") as batch:
        batch.add_column(
            sa.Column(
                "idempotency_key",
                sa.String(255),
                nullable=True,
                comment="the de-duplication key: idempotency_key, else event_id",
            )
        )
    op.execute("UPDATE billing_records SET idempotency_key = event_id")
    with op.batch_alter_table("billing_records") as batch:
        batch.alter_column(
            "idempotency_key",
            existing_type=sa.String(255),
            nullable=False,
            existing_comment="the de-duplication key: idempotency_key, else event_id",
        )
        batch.create_unique_constraint("uq_billing_records_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("billing_records") as batch:
        batch.drop_constraint("uq_billing_records_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
