"""The shipper's counters since start: ``repr`` shows them and tests assert on them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ShipperStats:
    published: int = 0  # new messages stored by JetStream
    duplicates: int = 0  # PubAcks with duplicate=true: delivered before
    retried: int = 0  # rows that failed alone and wait for their backoff
    dead: int = 0  # rows moved to dead by this process
    released: int = 0  # rows handed back because JetStream was unreachable
    batches: int = 0
    connections: int = 0
    cleaned: int = 0  # expired sent rows deleted
    vacuumed_pages: int = 0  # free pages given back to the file system
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)

    def summary(self) -> str:
        """The stop line: ``after 3.2 s: 100 published, 0 duplicates, ...``."""
        counts = (
            f"{self.published} published, {self.duplicates} duplicates, "
            f"{self.retried} retried later, {self.dead} dead, {self.released} handed back, "
            f"{self.batches} batches, {self.connections} connections"
        )
        if self.cleaned or self.vacuumed_pages:
            counts += f", {self.cleaned} sent rows cleaned, {self.vacuumed_pages} pages freed"
        tail = f"; last error: {self.last_error}" if self.last_error else ""
        return f"after {time.time() - self.started_at:.1f} s: {counts}{tail}"

    @property
    def delivered(self) -> int:
        return self.published + self.duplicates
