"""The usage event wire contract: validation and encoding, with no I/O.

Everything billing relies on is decided here, once: which inputs are refused, how the
usage amount is computed, the ``usage_details`` layout, the subject, the headers, the
``event_id`` and the ``timestamp``. The write API and the legacy drop-in both call
:func:`build_usage_event`; the shipper only republishes what this module produced.
See ``shared/contract/usage-event.md`` (copied in ``docs/usage-event.md``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

import uuid6

from outbox.errors import InvalidUsageEvent
from outbox.subject import MAX_TOKEN_LENGTH, product_token, usage_subject

EVENT_TYPE: Final = "billing.usage.recorded"
#: Default refusal threshold for one encoded payload. NATS's default ``max_payload`` is
#: 1 MiB; a usage record is ~400 bytes, so anything near this limit is a caller bug
#: (a prompt pasted into metadata), and refusing it early beats dead-lettering it later.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 64 * 1024

#: ``usage_details`` keys the contract owns; ``metadata`` may not overwrite them.
RESERVED_DETAIL_KEYS: Final = frozenset(
    {
        "provider",
        "model",
        "operation",
        "service_type",
        "input_tokens",
        "output_tokens",
        "input_units",
        "output_units",
    }
)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One validated, encoded usage event: the envelope the outbox stores.

    ``payload`` is the exact UTF-8 JSON that will be published; ``created_at`` is the
    write time as Unix seconds (the same instant as the payload's ``timestamp``).
    """

    event_id: str
    subject: str
    payload: bytes
    created_at: float

    @property
    def headers(self) -> dict[str, str]:
        return contract_headers(self.event_id)


def contract_headers(event_id: str) -> dict[str, str]:
    """The NATS headers of an event; ``Nats-Msg-Id`` is JetStream's de-duplication key."""
    return {"event_type": EVENT_TYPE, "Nats-Msg-Id": event_id}


def _require_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidUsageEvent(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidUsageEvent(field, "must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidUsageEvent(field, f"is not valid Unicode text: {exc.reason}") from exc
    return value


def _service_type_text(value: object) -> str:
    # Existing callers pass an Enum; the contract carries its value.
    if isinstance(value, Enum):
        value = value.value
    return _require_text("service_type", value)


def _token_count(field: str, value: object) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; True tokens is a caller bug, not a count of one.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsageEvent(field, f"must be a whole number, got {value!r}")
    if value < 0:
        raise InvalidUsageEvent(field, f"must not be negative, got {value}")
    return value


def _unit_count(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidUsageEvent(field, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidUsageEvent(field, f"must be finite, got {value!r}")
    if number < 0:
        raise InvalidUsageEvent(field, f"must not be negative, got {value!r}")
    return number


def _metadata(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidUsageEvent("metadata", f"must be a dict, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidUsageEvent("metadata", f"keys must be strings, got {key!r}")
        if key in RESERVED_DETAIL_KEYS:
            raise InvalidUsageEvent("metadata", f"key {key!r} would overwrite a contract field")
    return value


def _encode(document: dict[str, Any]) -> bytes:
    try:
        # allow_nan=False: NaN/Infinity are not JSON and billing's decoder would refuse them.
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        # The text fields were checked already, so an encoding failure is in metadata.
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidUsageEvent("metadata", f"is not JSON-serialisable: {exc}") from exc


def build_usage_event(
    *,
    user_id: object,
    product_id: object,
    provider: object,
    operation: object,
    service_type: object,
    input_tokens: object = None,
    output_tokens: object = None,
    input_units: object = None,
    output_units: object = None,
    metadata: object = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    now: float | None = None,
) -> UsageEvent:
    """Validate the legacy arguments and encode them as the contract says.

    Raises :class:`InvalidUsageEvent` naming the field and the reason; on success the
    returned event has a fresh time-ordered ``event_id`` (UUIDv7) and the write time.
    """
    user = _require_text("user_id", user_id)
    product = _require_text("product_id", product_id)
    provider_text = _require_text("provider", provider)
    operation_text = _require_text("operation", operation)
    service = _service_type_text(service_type)
    tokens_in = _token_count("input_tokens", input_tokens)
    tokens_out = _token_count("output_tokens", output_tokens)
    units_in = _unit_count("input_units", input_units)
    units_out = _unit_count("output_units", output_units)
    extra = _metadata(metadata)

    usage_amount: int | float
    if tokens_in is not None or tokens_out is not None:
        # One count alone is billed as that count (embeddings send only input tokens).
        usage_amount, unit_type = (tokens_in or 0) + (tokens_out or 0), "token"
    elif units_in is not None:
        usage_amount, unit_type = units_in, "request"
    else:
        raise InvalidUsageEvent(
            "usage", "nothing to bill: give input_tokens/output_tokens or input_units"
        )

    if len(product_token(product)) > MAX_TOKEN_LENGTH:
        raise InvalidUsageEvent(
            "product_id", f"is too long for a subject token (limit {MAX_TOKEN_LENGTH} encoded)"
        )

    details: dict[str, Any] = {
        "provider": provider_text,
        "model": product,
        "operation": operation_text,
        "service_type": service,
    }
    for key, count in (
        ("input_tokens", tokens_in),
        ("output_tokens", tokens_out),
        ("input_units", units_in),
        ("output_units", units_out),
    ):
        if count is not None:
            details[key] = count
    details.update(extra)

    created_at = time.time() if now is None else now
    event_id = str(uuid6.uuid7())
    payload = _encode(
        {
            "event_id": event_id,
            "user_id": user,
            "product_id": product,
            "usage_amount": usage_amount,
            "unit_type": unit_type,
            "usage_details": details,
            "timestamp": datetime.fromtimestamp(created_at, UTC).isoformat(timespec="microseconds"),
        }
    )
    if len(payload) > max_payload_bytes:
        raise InvalidUsageEvent(
            "payload",
            f"encoded event is {len(payload)} bytes, over the {max_payload_bytes}-byte limit",
        )
    return UsageEvent(
        event_id=event_id, subject=usage_subject(product), payload=payload, created_at=created_at
    )
