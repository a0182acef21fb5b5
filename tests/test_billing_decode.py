"""The strict decoder: every payload the producer makes decodes; anything else is refused
with a reason, and no amount is ever a float."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.decode import UsageRecord, decode_usage_event
from billing.errors import InvalidPayload
from outbox.contract import build_usage_event

VECTORS = json.loads((Path(__file__).parent / "contract_vectors.json").read_text("utf-8"))


def _good(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": "0190e1a0-0000-7000-8000-000000000001",
        "user_id": "user-1",
        "product_id": "gpt-4",
        "usage_amount": 300,
        "unit_type": "token",
        "usage_details": {"provider": "openai", "model": "gpt-4"},
        "timestamp": "2025-01-09T12:00:00.000000+00:00",
    }
    for key, value in changes.items():
        if value is _DROP:
            document.pop(key)
        else:
            document[key] = value
    return document


_DROP = object()


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_every_valid_contract_vector_decodes_to_what_it_says(vector: dict[str, Any]) -> None:
    call = dict(vector["call"])
    event = build_usage_event(
        product_id=vector["service"]["model_name"],
        provider=vector["service"]["provider_name"],
        **call,
    )
    record = decode_usage_event(event.payload)
    expected = vector["expect"]["payload"]
    assert record.event_id == event.event_id
    assert record.user_id == expected["user_id"]
    assert record.product_id == expected["product_id"]
    assert record.unit_type == expected["unit_type"]
    assert record.usage_amount == Decimal(str(expected["usage_amount"]))
    assert isinstance(record.usage_amount, Decimal)
    assert record.timestamp.tzinfo is UTC
    assert abs(record.timestamp.timestamp() - event.created_at) < 1e-5
    for key, value in expected["usage_details"].items():
        got = record.usage_details[key]
        assert got == (Decimal(str(value)) if isinstance(value, int | float) else value)


def test_numbers_are_decimals_parsed_from_the_json_text_never_floats() -> None:
    record = decode_usage_event(
        b'{"event_id":"e","user_id":"u","product_id":"p","usage_amount":0.30000000000000004,'
        b'"unit_type":"request","usage_details":{"input_units":0.1},'
        b'"timestamp":"2025-01-09T12:00:00+00:00"}'
    )
    assert record.usage_amount == Decimal("0.300000")  # 6 places, half-even, from the text
    assert record.usage_details["input_units"] == Decimal("0.1")  # not 0.1000000000000000055


def test_a_large_token_count_is_exact() -> None:
    record = decode_usage_event(_encode(_good(usage_amount=123456789012)))
    assert record.usage_amount == Decimal(123456789012)


def test_timestamp_with_another_offset_is_converted_to_utc() -> None:
    record = decode_usage_event(_encode(_good(timestamp="2025-01-09T14:00:00+02:00")))
    assert record.timestamp == datetime(2025, 1, 9, 12, 0, tzinfo=UTC)


def test_unknown_fields_are_allowed_because_the_contract_may_grow() -> None:
    record = decode_usage_event(_encode(_good(region="eu-west-1")))
    assert isinstance(record, UsageRecord)


def test_negative_zero_is_zero() -> None:
    payload = _encode(_good(usage_amount=0, unit_type="request"))
    record = decode_usage_event(payload.replace(b'"usage_amount": 0', b'"usage_amount": -0.0'))
    assert record.usage_amount == 0
    assert not record.usage_amount.is_signed()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"text"', "must be a JSON object, got string"),
        (b"null", "must be a JSON object, got null"),
        (
            _encode(_good(event_id=_DROP, user_id=_DROP)),
            "missing required field(s): event_id, user_id",
        ),
        (_encode(_good(user_id="")), "user_id: must not be empty"),
        (_encode(_good(user_id="   ")), "user_id: must not be empty"),
        (_encode(_good(user_id=42)), "user_id: must be a string, got number"),
        (_encode(_good(product_id=None)), "product_id: must be a string, got null"),
        (_encode(_good(product_id="x" * 256)), "product_id: longer than 255"),
        (_encode(_good(user_id="a\x00b")), "user_id: contains a NUL"),
        (_encode(_good(usage_amount=-1)), "usage_amount: must not be negative"),
        (_encode(_good(usage_amount="300")), "usage_amount: must be a number, got string"),
        (_encode(_good(usage_amount=True)), "usage_amount: must be a number, got boolean"),
        (_encode(_good(usage_amount=None)), "usage_amount: must be a number, got null"),
        (_encode(_good(usage_amount=1.5)), "a token count must be a whole number"),
        (_encode(_good(usage_amount=10**13)), "over the"),
        (_encode(_good(unit_type="tokens")), "unit_type: must be 'token' or 'request'"),
        (_encode(_good(unit_type=1)), "unit_type: must be a string"),
        (_encode(_good(usage_details=[])), "usage_details: must be an object, got array"),
        (_encode(_good(timestamp="yesterday")), "timestamp: 'yesterday' is not an ISO 8601"),
        (_encode(_good(timestamp="2025-01-09T12:00:00")), "has no UTC offset"),
        (_encode(_good(timestamp=1736424000)), "timestamp: must be a string"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode_usage_event(payload)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json_numbers(constant: bytes) -> None:
    payload = _encode(_good(usage_amount=0, unit_type="request")).replace(
        b'"usage_amount": 0', b'"usage_amount": ' + constant
    )
    with pytest.raises(InvalidPayload, match="not a JSON number"):
        decode_usage_event(payload)


def test_duplicate_keys_are_refused_rather_than_guessed() -> None:
    payload = _encode(_good()).replace(
        b'"usage_amount": 300', b'"usage_amount": 1, "usage_amount": 300'
    )
    with pytest.raises(InvalidPayload, match="duplicate key 'usage_amount'"):
        decode_usage_event(payload)


def test_a_refusal_keeps_a_usable_event_id_to_find_the_event_by() -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode_usage_event(_encode(_good(usage_amount=-5)))
    assert caught.value.event_id == "0190e1a0-0000-7000-8000-000000000001"
    with pytest.raises(InvalidPayload) as caught:
        decode_usage_event(_encode(_good(event_id=7, usage_amount=-5)))
    assert caught.value.event_id is None
