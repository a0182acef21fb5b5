"""When the shipper's database thread checkpoints the WAL (outbox.transactions)."""

from __future__ import annotations

import pytest

from outbox import transactions
from outbox.transactions import WAL_FRAMES_LIMIT, _Checkpoints


def test_checkpoints_wait_for_the_interval_then_run_after_every_write_while_the_wal_is_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(transactions.time, "monotonic", lambda: now[0])
    checkpoints = _Checkpoints(0.25)
    assert not checkpoints.due()  # the interval has not passed yet
    now[0] += 0.3
    assert checkpoints.due()
    checkpoints.done(WAL_FRAMES_LIMIT + 1)  # the WAL did not start over: catch up
    assert checkpoints.due() and checkpoints.due()
    checkpoints.done(10)  # started over: back to the interval
    assert not checkpoints.due()
    now[0] += 0.3
    assert checkpoints.due()
    checkpoints.done(None)  # a failed checkpoint: wait for the interval again
    assert not checkpoints.due()
