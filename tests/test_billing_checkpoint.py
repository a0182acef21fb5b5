"""The consumer's SQLite commits do not checkpoint the WAL (that stalled billing for up to
~200 ms every few seconds, see outbox/checkpoints.py); its checkpointer does, off the
commit path, and once more at close."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from nats.js import JetStreamContext

from billing import jetstream as billing_js
from outbox.checkpoints import checkpoint
from outbox.sqlite import sqlite_file
from tests.fixtures.billing import ConfigFactory, ConsumerFactory, publish, usage_event
from usage_demo.waiting import wait_until


async def test_the_consumer_checkpoints_off_the_commit_path_and_at_close(
    jetstream: JetStreamContext, billing_config: ConfigFactory, make_consumer: ConsumerFactory
) -> None:
    config = billing_config()
    await billing_js.ensure_stream(jetstream, config)
    consumer = make_consumer(config)
    await consumer.start()
    async with consumer.engine.connect() as conn:
        assert await conn.scalar(sa.text("PRAGMA wal_autocheckpoint")) == 0
    for _ in range(50):
        await publish(jetstream, usage_event())
    await consumer.drain(0.5)
    assert consumer.stats.unpriced == 50
    checkpointer = consumer.checkpointer
    assert checkpointer is not None
    await wait_until(lambda: checkpointer.checkpoints >= 1, message="a checkpoint while running")
    await consumer.close()
    path = sqlite_file(config.database_url)
    assert path is not None
    busy, frames, done = checkpoint(path)
    assert (busy, frames - done) == (0, 0), "nothing left in the WAL after close"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM billing_records").fetchone() == (50,)


async def test_other_engines_keep_sqlites_checkpoint_on_commit(billing_url: str) -> None:
    from billing.engines import create_billing_engine

    engine = create_billing_engine(billing_url)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA wal_autocheckpoint")) == 1000
    finally:
        await engine.dispose()
