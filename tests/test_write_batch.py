"""The batch write path (``record_usages``/``build_usage_events``) is the single-event
contract, event for event: every vector, and every generated input, gives the same payload
or the same refusal as ``record_usage_sync``; what a batch shares (one instant, ids made
together, the span read once) is checked here too."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from outbox import InvalidUsageEvent, build_usage_event, record_usages, record_usages_sync
from outbox.contract import build_usage_events
from outbox.ids import new_event_ids
from tests.fixtures.databases import count_outbox_rows
from tests.test_contract import (
    VECTORS,
    assert_uuid7,
    call_args,
    canonical_json,
    legacy_to_kwargs,
    stored_rows,
)

ARGS: dict[str, Any] = {
    "user_id": "u-1",
    "product_id": "gpt-4.1",
    "provider": "openai",
    "operation": "chat",
    "service_type": "text",
    "input_tokens": 10,
    "metadata": {"request_id": "r-1", "region": "eu"},
}


def without_instant(payload: bytes) -> dict[str, Any]:
    """The payload with the fields that differ between two writes of the same call."""
    document = json.loads(payload)
    for field in ("event_id", "idempotency_key", "timestamp"):
        document.pop(field)
    return document


def single_outcome(args: Mapping[str, Any]) -> tuple[str, Any]:
    try:
        event = build_usage_event(**args)
    except InvalidUsageEvent as refused:
        return "refused", refused.field
    return "built", (event.subject, without_instant(event.payload), event.trace)


def batch_outcome(args: Mapping[str, Any]) -> tuple[str, Any]:
    try:
        ((event_id, subject, payload, _, trace_context),) = build_usage_events([args])
    except InvalidUsageEvent as refused:
        return "refused", refused.field
    assert json.loads(payload)["event_id"] == event_id
    return "built", (subject, without_instant(payload), trace_context)


def test_every_valid_vector_in_one_batch(sync_engine: sa.Engine, outbox_path: Path) -> None:
    calls = [legacy_to_kwargs(case) for case in VECTORS["valid"]]
    with sync_engine.begin() as conn:
        ids = record_usages_sync(conn, calls)
    rows = stored_rows(outbox_path)
    assert [row["event_id"] for row in rows] == ids
    assert len(set(ids)) == len(ids)
    stamps = set()
    for call, row in zip(calls, rows, strict=True):
        payload = json.loads(row["payload"])
        assert canonical_json(payload) == row["payload"]
        assert payload["event_id"] == row["event_id"]
        assert payload["idempotency_key"] == "usage-outbox:" + row["event_id"]
        assert_uuid7(row["event_id"])
        single = build_usage_event(**call)
        assert row["subject"] == single.subject
        assert without_instant(row["payload"]) == without_instant(single.payload)
        assert json.loads(row["headers"]) == single.headers | {"Nats-Msg-Id": row["event_id"]}
        stamps.add((payload["timestamp"], row["created_at"]))
    assert len(stamps) == 1, "one batch, one write instant"


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_every_invalid_vector_refuses_its_batch(
    case: dict[str, Any], sync_engine: sa.Engine, outbox_path: Path
) -> None:
    good = legacy_to_kwargs(VECTORS["valid"][0])
    with sync_engine.begin() as conn, pytest.raises(InvalidUsageEvent) as refused:
        record_usages_sync(conn, [good, good, legacy_to_kwargs(case), good])
    assert refused.value.field == case["error"]
    assert count_outbox_rows(outbox_path) == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=call_args)
def test_property_batch_and_single_agree(args: dict[str, Any]) -> None:
    assert batch_outcome(args) == single_outcome(args)


@given(
    args=call_args,
    trace_args=st.sampled_from(
        [
            {},
            {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"},
            {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "k=v"},
            {"tracestate": "k=v"},
            {"traceparent": "nonsense"},
        ]
    ),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_batch_and_single_agree_inside_a_span(
    args: dict[str, Any], trace_args: dict[str, str]
) -> None:
    with in_span():
        assert batch_outcome({**args, **trace_args}) == single_outcome({**args, **trace_args})


def in_span() -> Any:
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    return trace.use_span(NonRecordingSpan(context))


def test_the_span_is_read_once_and_given_to_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    from outbox import contract

    reads = []
    real = contract.active_trace_context

    def counted() -> Any:
        reads.append(1)
        return real()

    monkeypatch.setattr(contract, "active_trace_context", counted)
    explicit = f"00-{'c' * 32}-{'d' * 16}-01"
    with in_span():
        built = build_usage_events([ARGS, ARGS, {**ARGS, "traceparent": explicit}, ARGS])
    assert len(reads) == 1
    traces = [event[4] for event in built]
    assert traces[0] == traces[1] == traces[3] is not None
    assert traces[0][0].startswith("00-0af7651916cd43dd8448eb211c80319c-")  # type: ignore[index]
    assert traces[2] == (explicit, None)


def test_unusual_items_behave_as_keywords_do() -> None:
    # Another Mapping is accepted, as **mapping is; unknown and missing keywords are
    # the TypeError a keyword call raises.
    (event,) = build_usage_events([MappingProxyType(ARGS)])
    assert without_instant(event[2]) == without_instant(build_usage_event(**ARGS).payload)
    with pytest.raises(TypeError, match="colour"):
        build_usage_events([ARGS, {**ARGS, "colour": "red"}])
    missing = dict(ARGS)
    del missing["provider"]
    with pytest.raises(TypeError, match="provider"):
        build_usage_events([missing])
    assert build_usage_events([]) == []
    assert len(build_usage_events(iter([ARGS, ARGS]))) == 2  # any iterable


def test_batch_ids_are_distinct_ordered_uuid7s_across_a_millisecond() -> None:
    # 999,900 ns into a millisecond: the fraction's 4,096 steps run out within the batch.
    ids = new_event_ids(1_700_000_000_000_999_900, 10_000)
    assert len(set(ids)) == len(ids) == 10_000
    assert ids == sorted(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert ids[0].startswith("018bcfe5-6800-7")  # the batch's own millisecond
    assert re.fullmatch(r"018bcfe5-680[0-3]-7.*", ids[-1])  # within 10,000 x 244 ns
    assert new_event_ids(0, 0) == []


async def test_async_batch_joins_the_callers_transaction(
    async_engine: Any, outbox_path: Path
) -> None:
    async with async_engine.connect() as conn:
        transaction = await conn.begin()
        await record_usages(conn, [ARGS, ARGS])
        await transaction.rollback()
    assert count_outbox_rows(outbox_path) == 0
    async with async_engine.begin() as conn:
        ids = await record_usages(conn, [ARGS, ARGS, ARGS])
    assert [row["event_id"] for row in stored_rows(outbox_path)] == ids
