"""Keep the platform's top-level ids, and the producer's own id of events keyed otherwise.

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-12-01

The platform's producer library (isa-common) sends ``organization_id``,
``subscription_id``, ``session_id``, ``request_id`` and ``agent_id`` at the top level of a
usage event (contract 1.1 does too); they are kept with the record. An event that billing
keys by its delivery (no idempotency key, and no id or the library's non-unique default
``evt_<epoch>``) is recorded under that key in ``event_id``; the id the producer sent is
kept in ``payload_event_id``. All nullable: rows before this revision have none of them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0003"
down_revision = "billing_0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("payload_event_id", "the producer's event_id, when billing keyed the event otherwise"),
    ("organization_id", "top-level id from the payload"),
    ("subscription_id", "top-level id from the payload"),
    ("session_id", "top-level id from the payload"),
    ("request_id", "top-level id from the payload"),
    ("agent_id", "top-level id from the payload"),
)


def upgrade() -> None:
    with op.batch_alter_table("billing_records") as batch:
        for name, comment in COLUMNS:
            batch.add_column(sa.Column(name, sa.String(255), nullable=True, comment=comment))


def downgrade() -> None:
    with op.batch_alter_table("billing_records") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
