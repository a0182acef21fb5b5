"""Contract 1.1 through every form of the write API: the idempotency key, the top-level
ids given as keywords, and the W3C trace context (explicit, or from the active span)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from outbox import (
    InvalidUsageEvent,
    Outbox,
    record_usage,
    record_usage_sync,
    record_usages,
    record_usages_sync,
)
from outbox.contract import EVENT_TYPE

ARGS: dict[str, Any] = {
    "user_id": "user-1",
    "product_id": "gpt-4.1",
    "provider": "openai",
    "operation": "chat",
    "service_type": "text",
    "input_tokens": 100,
}
IDS = {
    "organization_id": "org-1",
    "subscription_id": "sub-1",
    "session_id": "sess-1",
    "request_id": "req-1",
    "agent_id": "agent-1",
}
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def rows(path: Path) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(payload, headers) of every outbox row, in write order."""
    with closing(sqlite3.connect(path)) as conn:
        found = conn.execute("SELECT payload, headers FROM usage_outbox ORDER BY id").fetchall()
    return [(json.loads(payload), json.loads(headers)) for payload, headers in found]


@pytest.fixture
def active_span() -> Iterator[None]:
    """A sampled span of a remote caller made current, as OpenTelemetry instrumentation
    of an incoming request does (the API alone; no SDK is needed to carry a context)."""
    context = SpanContext(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    with trace.use_span(NonRecordingSpan(context)):
        yield


def assert_ids_on_top(payload: dict[str, Any]) -> None:
    assert payload["idempotency_key"] == "usage-outbox:" + payload["event_id"]
    assert {k: payload[k] for k in IDS} == IDS
    assert not set(IDS) & set(payload["usage_details"]), "keywords are not usage details"


async def test_every_async_form_takes_the_ids(async_engine: AsyncEngine, outbox_path: Path) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        await record_usage(session, **ARGS, **IDS)
        await record_usages(session, [{**ARGS, **IDS}, {**ARGS, **IDS}])
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**ARGS, **IDS)
        await outbox.record_many([{**ARGS, **IDS}])
    stored = rows(outbox_path)
    assert len(stored) == 5
    for payload, headers in stored:
        assert_ids_on_top(payload)
        assert headers == {"event_type": EVENT_TYPE, "Nats-Msg-Id": payload["event_id"]}


def test_every_sync_form_takes_the_ids(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with sync_engine.begin() as conn:
        record_usage_sync(conn, **ARGS, **IDS)
        record_usages_sync(conn, [{**ARGS, **IDS}])
    stored = rows(outbox_path)
    assert len(stored) == 2
    for payload, _ in stored:
        assert_ids_on_top(payload)


def test_a_bad_id_in_a_batch_refuses_the_batch(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usages_sync(conn, [{**ARGS, **IDS}, {**ARGS, "agent_id": 7}])
    assert refused.value.field == "agent_id"
    assert rows(outbox_path) == []


def test_no_trace_context_without_a_span_or_a_traceparent(
    sync_engine: sa.Engine, outbox_path: Path
) -> None:
    with sync_engine.begin() as conn:
        record_usage_sync(conn, **ARGS)
    ((payload, headers),) = rows(outbox_path)
    assert headers == {"event_type": EVENT_TYPE, "Nats-Msg-Id": payload["event_id"]}


@pytest.mark.usefixtures("active_span")
def test_the_active_spans_context_is_captured(sync_engine: sa.Engine, outbox_path: Path) -> None:
    with sync_engine.begin() as conn:
        record_usage_sync(conn, **ARGS)
    ((payload, headers),) = rows(outbox_path)
    assert headers == {
        "event_type": EVENT_TYPE,
        "Nats-Msg-Id": payload["event_id"],
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=v1",
    }
    assert "traceparent" not in payload  # headers only: the payload is the contract's


@pytest.mark.usefixtures("active_span")
async def test_the_outbox_captures_the_callers_span_not_its_writers(outbox_path: Path) -> None:
    # The Outbox commits from its own writer task; the context is the caller's, taken
    # when the event is built.
    async with Outbox(outbox_path) as outbox:
        await outbox.record(**ARGS)
    ((_, headers),) = rows(outbox_path)
    assert headers["traceparent"] == TRACEPARENT


@pytest.mark.usefixtures("active_span")
def test_an_explicit_traceparent_wins_over_the_span(
    sync_engine: sa.Engine, outbox_path: Path
) -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    with sync_engine.begin() as conn:
        record_usage_sync(conn, **ARGS, traceparent=given)
    ((_, headers),) = rows(outbox_path)
    assert headers["traceparent"] == given
    assert "tracestate" not in headers
