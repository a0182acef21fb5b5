"""Strict decoding of a usage event payload (see ``docs/usage-event.md``).

The decoder is the gate between the wire and money: whatever passes it can be billed
without another check, and whatever fails it raises :class:`InvalidPayload` with a
one-line reason that ``rejected_events`` keeps.

* The payload is UTF-8 JSON holding one object; duplicate keys are refused (two
  ``usage_amount`` keys would make the charge depend on the parser).
* Numbers are parsed as :class:`~decimal.Decimal` straight from their JSON text
  (``parse_float=Decimal, parse_int=Decimal``): no float ever holds an amount.
  ``NaN`` and ``Infinity`` are not JSON and are refused.
* Required: ``event_id``, ``user_id``, ``product_id`` (non-empty strings of at most
  :data:`MAX_ID_LENGTH` characters, no NUL), ``usage_amount`` (a finite, non-negative
  number, whole for tokens, at most ``pricing.MAX_USAGE_AMOUNT``), ``unit_type``
  (``"token"`` or ``"request"``), ``usage_details`` (an object) and ``timestamp``
  (ISO 8601 with a UTC offset). Other fields are allowed: the contract may grow.
* Optional ``idempotency_key`` (contract 1.1; the same rules as the ids): the key billing
  de-duplicates on when present, else ``event_id``, as the platform's real billing does,
  so the two billings agree on what "the same event" is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from billing.errors import InvalidPayload
from billing.pricing import MAX_USAGE_AMOUNT, quantize_usage

UNIT_TYPES: Final = frozenset({"token", "request"})
#: The width of the id columns. An outbox ``event_id`` is a 36-character UUID.
MAX_ID_LENGTH: Final = 255
REQUIRED_FIELDS: Final = (
    "event_id",
    "user_id",
    "product_id",
    "usage_amount",
    "unit_type",
    "usage_details",
    "timestamp",
)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One decoded usage event: everything billing needs, already checked."""

    event_id: str
    user_id: str
    product_id: str
    #: Rounded half-to-even to 6 places (``pricing.quantize_usage``); exact for tokens.
    usage_amount: Decimal
    unit_type: str
    #: The usage time from the payload, as an aware UTC datetime.
    timestamp: datetime
    usage_details: dict[str, Any]
    #: The producer's de-duplication key (contract 1.1), when the payload has one.
    idempotency_key: str | None = None

    @property
    def key(self) -> str:
        """What makes two deliveries "the same event": ``idempotency_key``, else ``event_id``."""
        return self.idempotency_key if self.idempotency_key is not None else self.event_id


def _refuse_constant(name: str) -> Any:
    raise InvalidPayload(f"payload is not valid JSON: {name} is not a JSON number")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):  # the cheap test first: this runs for every object
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidPayload(f"payload is ambiguous: duplicate key {key!r}")
            seen.add(key)
    return document


#: One decoder for every payload: ``json.loads`` with options builds a new one per call.
_DECODER: Final = json.JSONDecoder(
    parse_float=Decimal,
    parse_int=Decimal,
    parse_constant=_refuse_constant,
    object_pairs_hook=_unique_object,
)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"payload is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidPayload("payload is not valid JSON: nested too deeply") from exc
    if not isinstance(document, dict):
        raise InvalidPayload(f"payload must be a JSON object, got {_json_type(document)}")
    return document


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _text(document: dict[str, Any], field: str) -> str:
    value = document[field]
    if not isinstance(value, str):
        raise InvalidPayload(f"{field}: must be a string, got {_json_type(value)}")
    if not value.strip():
        raise InvalidPayload(f"{field}: must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidPayload(f"{field}: longer than {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise InvalidPayload(f"{field}: contains a NUL character")
    return value


def _amount(document: dict[str, Any], unit_type: str) -> Decimal:
    value = document["usage_amount"]
    if not isinstance(value, Decimal):
        raise InvalidPayload(f"usage_amount: must be a number, got {_json_type(value)}")
    if not value.is_finite():  # cannot come from JSON, but the rule is the rule
        raise InvalidPayload(f"usage_amount: must be finite, got {value}")
    if value < 0:
        raise InvalidPayload(f"usage_amount: must not be negative, got {value}")
    if value > MAX_USAGE_AMOUNT:
        raise InvalidPayload(f"usage_amount: {value} is over the {MAX_USAGE_AMOUNT} limit")
    if unit_type == "token" and value != value.to_integral_value():
        raise InvalidPayload(f"usage_amount: a token count must be a whole number, got {value}")
    return quantize_usage(value) + 0  # "+ 0" turns -0 into 0


def _timestamp(document: dict[str, Any]) -> datetime:
    value = document["timestamp"]
    if not isinstance(value, str):
        raise InvalidPayload(f"timestamp: must be a string, got {_json_type(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidPayload(f"timestamp: {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidPayload(f"timestamp: {value!r} has no UTC offset")
    return moment.astimezone(UTC)


def decode_usage_event(data: bytes) -> UsageRecord:
    """Decode and check one payload; raise :class:`InvalidPayload` with the reason."""
    document = _parse(data)
    event_id = document.get("event_id")
    try:
        missing = [field for field in REQUIRED_FIELDS if field not in document]
        if missing:
            raise InvalidPayload(f"missing required field(s): {', '.join(missing)}")
        event_id = _text(document, "event_id")
        unit_type = document["unit_type"]
        # Type first: `[...] in frozenset` raises TypeError (a list is unhashable), which
        # escaped the consumer and stopped it on every redelivery of such a message.
        if not isinstance(unit_type, str) or unit_type not in UNIT_TYPES:
            raise InvalidPayload(
                f"unit_type: must be 'token' or 'request', got {unit_type!r}"
                if isinstance(unit_type, str)
                else f"unit_type: must be a string, got {_json_type(unit_type)}"
            )
        details = document["usage_details"]
        if not isinstance(details, dict):
            raise InvalidPayload(f"usage_details: must be an object, got {_json_type(details)}")
        return UsageRecord(
            event_id=event_id,
            user_id=_text(document, "user_id"),
            product_id=_text(document, "product_id"),
            usage_amount=_amount(document, unit_type),
            unit_type=unit_type,
            timestamp=_timestamp(document),
            usage_details=details,
            idempotency_key=(
                _text(document, "idempotency_key") if "idempotency_key" in document else None
            ),
        )
    except InvalidPayload as exc:
        # Keep the id with the rejection when it is a usable one: it helps find the event.
        if exc.event_id is None:
            exc.event_id = _usable_id(event_id)
        raise


def _usable_id(value: object) -> str | None:
    if isinstance(value, str) and value.strip() and "\x00" not in value:
        return value[:MAX_ID_LENGTH]
    return None
