"""The benchmarks' events: ~410-byte usage events from the real write API, fresh ids."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from outbox import Outbox, build_usage_event

PRODUCTS = ("claude-3.5-sonnet", "gpt-4o", "llama-3-70b", "mistral-large")


Message = tuple[str, bytes, dict[str, str]]


def event_args(i: int) -> dict[str, Any]:
    """One event's arguments for the write API; the payload comes out at ~410 bytes."""
    return {
        "user_id": f"user-{i % 10_000:06d}",
        "product_id": PRODUCTS[i % len(PRODUCTS)],
        "provider": "anthropic",
        "operation": "chat",
        "service_type": "text",
        "input_tokens": 1234,
        "output_tokens": 567,
        "metadata": {"request_id": f"req-{i:08x}", "region": "eu-west-1", "latency_ms": 812.5},
    }


def build_messages(count: int) -> list[Message]:
    """Fresh events (new ids) as the shipper would publish them: subject, payload, headers."""
    messages: list[Message] = []
    for i in range(count):
        event = build_usage_event(**event_args(i))
        messages.append((event.subject, event.payload, event.headers))
    return messages


async def fill_outbox(path: Path, count: int, chunk: int = 1000) -> None:
    """Write ``count`` events through the real write API, ``chunk`` per commit."""
    async with Outbox(path) as outbox:
        for first in range(0, count, chunk):
            await outbox.record_many(
                [event_args(i) for i in range(first, min(count, first + chunk))]
            )


def pending_rows(path: Path) -> int:
    """Rows not yet acknowledged (pending or dead; ``sent`` rows kept for audit excluded)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM usage_outbox WHERE state <> 'sent'"
        ).fetchone()
    return int(count)
