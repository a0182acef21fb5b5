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
* Optional top-level ids (:data:`TOP_LEVEL_IDS`: ``organization_id``, ``session_id``, ...;
  ``null`` counts as absent): kept with the record.

The platform's other producers (the ``UsageEvent`` of the ``isa-common`` library) publish
a second shape, told apart by its ``schema_version`` field: required only ``user_id``,
``product_id``, ``usage_amount`` and ``unit_type`` (any of :data:`PLATFORM_UNIT_TYPES`,
each priced on its own); ``event_id``, ``usage_details`` and ``timestamp`` optional. Its
times are the library's ``datetime.isoformat()``: one without an offset is UTC, a missing
one is the time the stream stored the message. Its default ``event_id`` is ``evt_<epoch
seconds>``, which two events of the same instant share: such an event
(:attr:`UsageRecord.keyed_by_delivery`) is keyed by the stream and sequence of its
delivery, never by that id, so two different usages are never merged (and a producer that
published one event twice is billed twice: it gave no way to tell the copies apart). The
same holds for an event with no id at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from billing.errors import InvalidPayload
from billing.pricing import MAX_USAGE_AMOUNT, quantize_usage

#: The unit types of this project's contract.
CONTRACT_UNIT_TYPES: Final = frozenset({"token", "request"})
#: The unit types of the platform's producers (isa-common 0.6.14); a price is per unit type.
PLATFORM_UNIT_TYPES: Final = frozenset(
    {
        "token",
        "image",
        "minute",
        "hour",
        "character",
        "request",
        "url",
        "byte",
        "gb",
        "gb_month",
        "execution",
        "operation",
        "unit",
        "second",
    }
)
#: Every unit type a price can be set for.
UNIT_TYPES: Final = PLATFORM_UNIT_TYPES
#: Required in the platform's shape (the contract requires :data:`REQUIRED_FIELDS`).
PLATFORM_REQUIRED_FIELDS: Final = ("user_id", "product_id", "usage_amount", "unit_type")
#: Identifiers read from the top level of either shape and kept with the record.
TOP_LEVEL_IDS: Final = (
    "organization_id",
    "subscription_id",
    "session_id",
    "request_id",
    "agent_id",
)
#: isa-common's default event id, ``f"evt_{time.time()}"``: not unique (see above).
_DEFAULT_PLATFORM_ID: Final = re.compile(r"evt_\d+(\.\d*)?")
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


# Not frozen: a frozen dataclass sets each field through object.__setattr__, about 3 us
# per record of ten fields (measured), paid for every event; nothing mutates a record.
@dataclass(slots=True)
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
    #: The platform's top-level ids that the payload carried (:data:`TOP_LEVEL_IDS`).
    ids: dict[str, str] = field(default_factory=dict)
    #: True when neither ``idempotency_key`` nor a unique ``event_id`` identifies the
    #: event (the platform's default ``evt_<epoch>`` id, or none, in ``event_id`` as ""):
    #: billing keys it by its delivery (:func:`delivery_key`) instead.
    keyed_by_delivery: bool = False

    @property
    def key(self) -> str:
        """What makes two deliveries "the same event": ``idempotency_key``, else ``event_id``
        (meaningless when :attr:`keyed_by_delivery`: then the delivery is the key)."""
        return self.idempotency_key if self.idempotency_key is not None else self.event_id


def delivery_key(stream: str, stream_created: int, stream_seq: int) -> str:
    """The key of an event keyed by its delivery: the stream (its name and when it was
    created: a re-created stream restarts its sequences) and the message's sequence. A
    redelivery of the message has the same key; another message never does."""
    return f"delivery:{stream}:{stream_created}:{stream_seq}"


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
    # The common case in one test (this runs five times per event); the reasons below.
    if (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and "\x00" not in value
        and value.strip()
    ):
        return value
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


def _timestamp(document: dict[str, Any], *, naive_is_utc: bool = False) -> datetime:
    value = document["timestamp"]
    if not isinstance(value, str):
        raise InvalidPayload(f"timestamp: must be a string, got {_json_type(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidPayload(f"timestamp: {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        if not naive_is_utc:
            raise InvalidPayload(f"timestamp: {value!r} has no UTC offset")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _unit_type(document: dict[str, Any], allowed: frozenset[str]) -> str:
    unit_type = document["unit_type"]
    # Type first: `[...] in frozenset` raises TypeError (a list is unhashable), which
    # escaped the consumer and stopped it on every redelivery of such a message.
    if not isinstance(unit_type, str):
        raise InvalidPayload(f"unit_type: must be a string, got {_json_type(unit_type)}")
    if unit_type not in allowed:
        if allowed == CONTRACT_UNIT_TYPES:
            raise InvalidPayload(f"unit_type: must be 'token' or 'request', got {unit_type!r}")
        raise InvalidPayload(
            f"unit_type: must be one of {', '.join(sorted(allowed))}, got {unit_type!r}"
        )
    return unit_type


def _details(document: dict[str, Any]) -> dict[str, Any]:
    details = document.get("usage_details")
    if details is None and "usage_details" not in document:
        return {}
    if not isinstance(details, dict):
        raise InvalidPayload(f"usage_details: must be an object, got {_json_type(details)}")
    return details


def _optional_text(document: dict[str, Any], name: str) -> str | None:
    return None if document.get(name) is None else _text(document, name)


def _ids(document: dict[str, Any]) -> dict[str, str]:
    # Most payloads carry none or few of these: look each up once, check only what is there.
    found: dict[str, str] = {}
    for name in TOP_LEVEL_IDS:
        if document.get(name) is not None:
            found[name] = _text(document, name)
    return found


def is_platform_shape(document: dict[str, Any]) -> bool:
    """The platform library's ``UsageEvent``: it always sends ``schema_version`` (this
    project's contract has no such field, so its payloads keep every rule above)."""
    return "schema_version" in document


def decode_usage_event(
    data: bytes, *, stored_at: datetime | None = None, stored_at_ns: int | None = None
) -> UsageRecord:
    """Decode and check one payload; raise :class:`InvalidPayload` with the reason.

    ``stored_at`` (or ``stored_at_ns``, Unix nanoseconds, turned into a time only when
    needed): when the stream stored the message, the time of a platform event that has
    none (default: now).
    """
    document = _parse(data)
    event_id = document.get("event_id")
    try:
        if is_platform_shape(document):
            if stored_at is None and stored_at_ns is not None:  # only this shape needs it
                stored_at = datetime.fromtimestamp(stored_at_ns / 1_000_000_000, UTC)
            return _platform_event(document, stored_at)
        missing = [name for name in REQUIRED_FIELDS if name not in document]
        if missing:
            raise InvalidPayload(f"missing required field(s): {', '.join(missing)}")
        event_id = _text(document, "event_id")
        unit_type = _unit_type(document, CONTRACT_UNIT_TYPES)
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
            ids=_ids(document),
        )
    except InvalidPayload as exc:
        # Keep the id with the rejection when it is a usable one: it helps find the event.
        if exc.event_id is None:
            exc.event_id = _usable_id(event_id)
        raise


def _platform_event(document: dict[str, Any], stored_at: datetime | None) -> UsageRecord:
    missing = [name for name in PLATFORM_REQUIRED_FIELDS if name not in document]
    if missing:
        raise InvalidPayload(f"missing required field(s): {', '.join(missing)}")
    event_id = _optional_text(document, "event_id")
    idempotency_key = _optional_text(document, "idempotency_key")
    unit_type = _unit_type(document, PLATFORM_UNIT_TYPES)
    if document.get("timestamp") is None:
        moment = (stored_at or datetime.now(UTC)).astimezone(UTC)
    else:
        moment = _timestamp(document, naive_is_utc=True)
    by_delivery = idempotency_key is None and (
        event_id is None or _DEFAULT_PLATFORM_ID.fullmatch(event_id) is not None
    )
    return UsageRecord(
        event_id=event_id or "",
        user_id=_text(document, "user_id"),
        product_id=_text(document, "product_id"),
        usage_amount=_amount(document, unit_type),
        unit_type=unit_type,
        timestamp=moment,
        usage_details=_details(document),
        idempotency_key=idempotency_key,
        ids=_ids(document),
        keyed_by_delivery=by_delivery,
    )


def _usable_id(value: object) -> str | None:
    if isinstance(value, str) and value.strip() and "\x00" not in value:
        return value[:MAX_ID_LENGTH]
    return None
