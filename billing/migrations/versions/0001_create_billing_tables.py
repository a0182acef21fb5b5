"""Create billing's tables: billing_records (the inbox), wallets, wallet_transactions,
prices and rejected_events.

Revision ID: billing_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from billing.types import ExactDecimal

revision = "billing_0001"
down_revision = None
branch_labels = ("billing",)
depends_on = None

_row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "billing_records",
        sa.Column("id", _row_id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("product_id", sa.String(255), nullable=False),
        sa.Column("unit_type", sa.String(16), nullable=False),
        sa.Column("usage_amount", ExactDecimal(38, 6), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, comment="billed or unpriced"),
        sa.Column("unit_price", ExactDecimal(38, 12), nullable=True, comment="the price applied"),
        sa.Column("charge", ExactDecimal(38, 9), nullable=True, comment="NULL when unpriced"),
        sa.Column("event_time", sa.DateTime(), nullable=False, comment="payload timestamp, UTC"),
        sa.Column("received_at", sa.DateTime(), nullable=False, comment="commit time, UTC"),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True, comment="JetStream sequence"),
        sa.CheckConstraint(
            "(state = 'billed' AND charge IS NOT NULL AND unit_price IS NOT NULL)"
            " OR (state = 'unpriced' AND charge IS NULL AND unit_price IS NULL)",
            name=op.f("ck_billing_records_state_charge"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_billing_records"),
        sa.UniqueConstraint("event_id", name="uq_billing_records_event_id"),
    )
    op.create_index("ix_billing_records_user_id", "billing_records", ["user_id"])
    op.create_table(
        "wallets",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("balance", ExactDecimal(38, 9), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_wallets"),
    )
    op.create_table(
        "wallet_transactions",
        sa.Column("id", _row_id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, comment="debit"),
        sa.Column(
            "amount", ExactDecimal(38, 9), nullable=False, comment="signed; a debit is -charge"
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["wallets.user_id"], name="fk_wallet_transactions_user_id_wallets"
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["billing_records.event_id"],
            name="fk_wallet_transactions_event_id_billing_records",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_wallet_transactions"),
        sa.UniqueConstraint("event_id", name="uq_wallet_transactions_event_id"),
    )
    op.create_index("ix_wallet_transactions_user_id", "wallet_transactions", ["user_id"])
    op.create_table(
        "prices",
        sa.Column("product_id", sa.String(255), nullable=False),
        sa.Column("unit_type", sa.String(16), nullable=False),
        sa.Column("unit_price", ExactDecimal(38, 12), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("product_id", "unit_type", name="pk_prices"),
    )
    op.create_table(
        "rejected_events",
        sa.Column("id", _row_id, primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False, comment="the raw bytes received"),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=True, comment="when the payload had one"),
        sa.Column("deliveries", sa.Integer(), nullable=False, comment="JetStream delivery count"),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_events"),
        sa.UniqueConstraint(
            "stream",
            "stream_seq",
            "payload_sha256",
            name="uq_rejected_events_stream_stream_seq_payload_sha256",
        ),
    )


def downgrade() -> None:
    op.drop_table("rejected_events")
    op.drop_table("prices")
    op.drop_index("ix_wallet_transactions_user_id", table_name="wallet_transactions")
    op.drop_table("wallet_transactions")
    op.drop_table("wallets")
    op.drop_index("ix_billing_records_user_id", table_name="billing_records")
    op.drop_table("billing_records")
