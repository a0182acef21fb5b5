"""Billing acks JetStream after its commit, so on SQLite each commit is synced to disk
(``synchronous=FULL``): a power cut must not undo a batch the server was told is billed."""

from __future__ import annotations

import sqlalchemy as sa

from billing.engines import create_billing_engine, create_billing_sync_engine

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_the_billing_engines_sync_every_commit(billing_url: str) -> None:
    engine = create_billing_engine(billing_url)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA synchronous")) == FULL
    finally:
        await engine.dispose()
    # The consumer commits its batches on this one (billing/sqlite_thread.py).
    sync_engine = create_billing_sync_engine(billing_url, checkpoint_on_commit=False)
    try:
        with sync_engine.connect() as conn:
            assert conn.scalar(sa.text("PRAGMA synchronous")) == FULL
    finally:
        sync_engine.dispose()
