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

    @property
    def delivered(self) -> int:
        return self.published + self.duplicates
