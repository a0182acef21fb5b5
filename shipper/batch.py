"""What one drain step handles: a claimed batch, and what its acks say should be written.

:class:`Batch` is claimed rows split into messages to publish and rows refused before
publishing (:func:`prepare`); :class:`Settlement` is the outcome of publishing them
(:func:`settle`), written to the outbox in the next short transaction (see
:class:`shipper.pipeline.Pipeline`). Both functions here are pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from outbox import store
from shipper.publisher import Message, Outcome, Result
from shipper.rows import Refusal, to_message


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


def retry_at(attempts: int, *, now: float, base: float, cap: float) -> float:
    """When a row that failed alone is due again: exponential in its attempts, with
    jitter so rows that failed together do not come back together."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return now + delay * random.uniform(0.5, 1.0)


def prepare(
    rows: list[store.OutboxRow],
    *,
    full: bool,
    buried: list[store.OutboxRow],
    max_payload: int,
    parse_payloads: bool,
) -> Batch:
    """Claimed rows as a batch: each a message, or refused with the reason it never can be."""
    batch = Batch(rows=rows, full=full, buried=buried)
    for row in rows:
        prepared = to_message(row, max_payload=max_payload, parse_payload=parse_payloads)
        if isinstance(prepared, Refusal):
            batch.refused.append(store.Failure(row.id, prepared.reason))
        else:
            batch.messages.append(prepared)
            batch.sendable.append(row)
    return batch


@dataclass
class Tally:
    """Counts of one batch's answers, for the stats (see :func:`settle`)."""

    stored: int = 0
    duplicates: int = 0
    unreachable: int = 0


def settle(
    batch: Batch, results: Sequence[Result], *, now: float, retry_base: float, retry_cap: float
) -> tuple[Settlement, Tally]:
    """What the answers to ``batch.sendable`` (one result each, in order) say should be
    written: a PubAck (new or duplicate) acks the row, a refusal sends it to dead, a
    failure of the row alone retries it after its backoff, and a missing stream hands it
    back untouched (with ``trouble`` set: the connection, not the row, is at fault)."""
    outcome = Settlement(dead=list(batch.refused))
    tally = Tally()
    why = ""
    for row, result in zip(batch.sendable, results, strict=True):
        if result.outcome is Outcome.STORED:
            tally.stored += 1
            outcome.acked.append(row.id)
        elif result.outcome is Outcome.DUPLICATE:
            tally.duplicates += 1
            outcome.acked.append(row.id)
        elif result.outcome is Outcome.UNREACHABLE:
            tally.unreachable += 1
            why = why or result.detail
            outcome.release.append(row.id)
        elif result.outcome is Outcome.REJECTED:
            outcome.dead.append(store.Failure(row.id, result.detail))
        else:
            at = retry_at(row.attempts + 1, now=now, base=retry_base, cap=retry_cap)
            outcome.retry.append(store.Failure(row.id, result.detail, at))
    if tally.unreachable:
        outcome.trouble = f"{tally.unreachable} messages not stored, e.g. {why}"
    return outcome, tally
