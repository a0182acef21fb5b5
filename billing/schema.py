"""Billing's tables, as SQLAlchemy Core objects (created by ``billing/migrations``).

* ``billing_records``: one row per usage event, unique on ``idempotency_key`` (the
  payload's, else its ``event_id``: what the platform's real billing de-duplicates on) and
  on ``event_id`` (the ledger refers to it). This is the inbox: inserting the row is what
  makes an event "seen", in the same transaction as its money. A message whose key is new
  but whose ``event_id`` is known counts as a duplicate: never a second charge.
  ``state`` is ``billed`` (``charge`` and ``unit_price`` set) or ``unpriced`` (no price
  for the product and unit type when it arrived: kept, visible, not charged). The
  payload's top-level ids are kept; an event keyed by its delivery (see
  ``billing.decode``) has that key as ``event_id`` and the producer's id in
  ``payload_event_id``.
* ``wallets``: one balance per user, created at 0 on the user's first event.
* ``wallet_transactions``: the ledger, one row per billed event (``event_id`` unique).
  ``amount`` is signed: a debit is ``-charge``. A wallet's balance is the sum of its rows.
* ``prices``: the unit price per ``(product_id, unit_type)``.
* ``rejected_events``: messages that are not JSON or break the contract, with the raw
  bytes and the reason. Unique on the delivery (stream, sequence, payload hash), so a
  rejection redelivered after a crash is stored once.

Money and amounts are :class:`~billing.types.ExactDecimal` (exact NUMERIC; a scaled
integer on SQLite). Times are naive UTC ``DateTime`` columns (the same on both backends).
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from billing.types import ExactDecimal

BILLED: Final = "billed"
UNPRICED: Final = "unpriced"
DEBIT: Final = "debit"

#: alembic's version table for billing's own history (the outbox has its own).
VERSION_TABLE: Final = "billing_alembic_version"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes INTEGER PRIMARY KEY the rowid alias; PostgreSQL gets a BIGINT.
_row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def usage_amount_type() -> ExactDecimal:
    return ExactDecimal(38, 6)


def money_type() -> ExactDecimal:
    return ExactDecimal(38, 9)


def price_type() -> ExactDecimal:
    return ExactDecimal(38, 12)


billing_records = sa.Table(
    "billing_records",
    metadata,
    sa.Column("id", _row_id, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(255), nullable=False, unique=True),
    sa.Column("user_id", sa.String(255), nullable=False, index=True),
    sa.Column("product_id", sa.String(255), nullable=False),
    sa.Column("unit_type", sa.String(16), nullable=False),
    sa.Column("usage_amount", usage_amount_type(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, comment="billed or unpriced"),
    sa.Column("unit_price", price_type(), nullable=True, comment="the price applied"),
    sa.Column("charge", money_type(), nullable=True, comment="NULL when unpriced"),
    sa.Column("event_time", sa.DateTime(), nullable=False, comment="payload timestamp, UTC"),
    sa.Column("received_at", sa.DateTime(), nullable=False, comment="commit time, UTC"),
    sa.Column("stream_seq", sa.BigInteger(), nullable=True, comment="JetStream sequence"),
    sa.Column(
        "idempotency_key",
        sa.String(255),
        nullable=False,
        unique=True,
        comment="the de-duplication key: idempotency_key, else event_id",
    ),
    sa.Column(
        "payload_event_id",
        sa.String(255),
        nullable=True,
        comment="the producer's event_id, when billing keyed the event otherwise",
    ),
    *(
        sa.Column(name, sa.String(255), nullable=True, comment="top-level id from the payload")
        for name in ("organization_id", "subscription_id", "session_id", "request_id", "agent_id")
    ),
    sa.CheckConstraint(
        "(state = 'billed' AND charge IS NOT NULL AND unit_price IS NOT NULL)"
        " OR (state = 'unpriced' AND charge IS NULL AND unit_price IS NULL)",
        name="state_charge",
    ),
)

wallets = sa.Table(
    "wallets",
    metadata,
    sa.Column("user_id", sa.String(255), primary_key=True),
    sa.Column("balance", money_type(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

wallet_transactions = sa.Table(
    "wallet_transactions",
    metadata,
    sa.Column("id", _row_id, primary_key=True, autoincrement=True),
    sa.Column(
        "user_id",
        sa.String(255),
        sa.ForeignKey("wallets.user_id"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "event_id",
        sa.String(255),
        sa.ForeignKey("billing_records.event_id"),
        nullable=False,
        unique=True,
    ),
    sa.Column("kind", sa.String(16), nullable=False, comment="debit"),
    sa.Column("amount", money_type(), nullable=False, comment="signed; a debit is -charge"),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

prices = sa.Table(
    "prices",
    metadata,
    sa.Column("product_id", sa.String(255), primary_key=True),
    sa.Column("unit_type", sa.String(16), primary_key=True),
    sa.Column("unit_price", price_type(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
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
    sa.UniqueConstraint("stream", "stream_seq", "payload_sha256"),
)
