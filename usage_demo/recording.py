"""What the demo keeps to check its verdict: which event id each call got (the legacy
method returns only a bool), and the per-user table it prints."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

from billing.report import BillingReport, aligned_table
from outbox import Outbox
from usage_demo.traffic import Call


def user_table(report: BillingReport) -> list[str]:
    """The per-user lines of the verdict, then the totals: billing's own table layout,
    which pads by display width, so a CJK user id lines up with the others."""
    rows = [
        (u.user_id, str(u.billed_events), str(u.unpriced_events), str(u.charged), str(u.balance))
        for u in report.users
    ]
    total = (
        "total",
        str(report.billed_events),
        str(report.unpriced_events),
        str(report.total_charged),
        str(report.total_balance),
    )
    return aligned_table(("user", "billed", "unpriced", "charged", "balance"), rows, total)


#: Replays carry this before the original message id, as a fresh Nats-Msg-Id.
REPLAY_PREFIX = "replay-"

current_call: contextvars.ContextVar[Call] = contextvars.ContextVar("current_call")


class RecordingOutbox(Outbox):
    """The legacy method returns only a bool; this notes which event id each call got,
    for the exactly-once check at the end."""

    def __init__(self, path: Path, written: dict[str, Call]) -> None:
        super().__init__(path, run_migrations=False)  # migrated by the demo already
        self.written = written

    async def record(self, **event: Any) -> str:
        event_id = await super().record(**event)
        self.written[event_id] = current_call.get()
        return event_id
