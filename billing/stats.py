"""The consumer's counters since start (the stop line, ``repr``, tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from billing.items import Outcome


@dataclass
class ConsumerStats:
    """Counters since start; ``received`` counts deliveries, redeliveries included."""

    received: int = 0
    billed: int = 0
    unpriced: int = 0
    duplicates: int = 0
    rejected: int = 0
    retried: int = 0
    batches: int = 0
    fetch_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        """``billed 7, unpriced 0, ..., fetch errors 0``: for the stop line."""
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.as_dict().items())

    def count(self, outcomes: Sequence[Outcome]) -> None:
        """Count one settled batch."""
        self.batches += 1
        self.received += len(outcomes)
        for outcome in outcomes:
            if outcome is Outcome.BILLED:
                self.billed += 1
            elif outcome is Outcome.UNPRICED:
                self.unpriced += 1
            elif outcome is Outcome.DUPLICATE:
                self.duplicates += 1
            elif outcome is Outcome.REJECTED:
                self.rejected += 1
            else:
                self.retried += 1
