"""What one drain step handles: a claimed batch, and what its acks say should be written.

:class:`Batch` is claimed rows split into messages to publish and rows refused before
publishing; :class:`Settlement` is the outcome of publishing them, written to the outbox
in the next short transaction (see :meth:`shipper.worker.Shipper.drain`).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from outbox import store
from shipper.publisher import Message


@dataclass
class Batch:
    """Claimed rows, split into messages to publish and rows refused before publishing."""

    rows: list[store.OutboxRow]
    full: bool
    buried: list[store.OutboxRow] = field(default_factory=list)  # out of attempts: to dead
    messages: list[Message] = field(default_factory=list)
    sendable: list[store.OutboxRow] = field(default_factory=list)
    refused: list[store.Failure] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def first_id(self) -> int:
        return self.rows[0].id

    @property
    def last_id(self) -> int:
        return self.rows[-1].id

    @property
    def span(self) -> tuple[int, int]:
        return self.first_id, self.last_id

    @property
    def suspect(self) -> bool:
        """A row here had an attempt that ended without a PubAck (see Shipper.drain)."""
        return any(row.attempts for row in self.rows)


@dataclass
class Settlement:
    """What to write about rows once their fate is known (see :mod:`outbox.store`)."""

    acked: list[int] = field(default_factory=list)
    retry: list[store.Failure] = field(default_factory=list)
    dead: list[store.Failure] = field(default_factory=list)
    release: list[int] = field(default_factory=list)  # handed back as they were: no write
    trouble: str | None = None  # connection-level trouble met while publishing

    def __bool__(self) -> bool:  # anything to write?
        return bool(self.acked or self.retry or self.dead)

    def written_ids(self) -> set[int]:
        """Rows whose outcome this settlement will write: not to be claimed again."""
        ids = set(self.acked)
        ids.update(failure.id for failure in self.retry)
        ids.update(failure.id for failure in self.dead)
        return ids

    def absorb(self, other: Settlement) -> None:
        self.acked.extend(other.acked)
        self.retry.extend(other.retry)
        self.dead.extend(other.dead)
        self.release.extend(other.release)


#: A batch being published and the task that publishes it.
Flight = tuple[Batch, "asyncio.Task[Settlement]"]


@dataclass
class Ahead:
    """The batch claimed while the one before waits for its acks, and how far it got."""

    batch: Batch | None = None
    recorded: bool = False  # recorded in flight with the lease
    flight: Flight | None = None  # published already (both fit in the in-flight window)


def retry_at(attempts: int, *, now: float, base: float, cap: float) -> float:
    """When a row that failed alone is due again: exponential in its attempts, with
    jitter so rows that failed together do not come back together."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return now + delay * random.uniform(0.5, 1.0)
