"""Validation of a usage event's fields, one function a kind of field, with no I/O.

Each check raises :class:`~outbox.errors.InvalidUsageEvent` naming the field and the
reason, and returns the value as the contract carries it. :mod:`outbox.contract` calls
them in the order that decides which field a refusal names, then encodes the event.
The bounds are billing's: an event over them would be written, shipped and never billed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Final

from outbox.errors import InvalidUsageEvent

#: Largest token count (and token total) accepted: a signed 64-bit integer, what billing's
#: ledger and every JSON consumer that is not Python can hold. Anything above is a caller
#: bug; without the bound a 5,000-digit count failed in the JSON encoder and was reported
#: against ``metadata``.
MAX_TOKEN_COUNT: Final = 2**63 - 1
#: Billing refuses an event over these (``billing.decode``: ids of at most 255 characters
#: without NUL, a usage amount of at most 10**12): refused here, or such an event would be
#: written, shipped and then never billed.
MAX_ID_LENGTH: Final = 255
MAX_USAGE_AMOUNT: Final = 10**12

#: Identifiers the platform's billing reads only at the payload's top level (contract 1.1),
#: in the order they are written. Given as keywords, or lifted from ``metadata``.
ID_FIELDS: Final = ("organization_id", "subscription_id", "session_id", "request_id", "agent_id")
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


def require_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidUsageEvent(field, f"must be a string, got {type(value).__name__}")
    if not value or value.isspace():  # the same test as `not value.strip()`, no copy
        raise InvalidUsageEvent(field, "must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidUsageEvent(field, f"is not valid Unicode text: {exc.reason}") from exc
    return value


def require_id(field: str, value: object) -> str:
    text = require_text(field, value)
    if len(text) > MAX_ID_LENGTH:
        raise InvalidUsageEvent(field, f"is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in text:
        raise InvalidUsageEvent(field, "must not contain a NUL character")
    return text


def liftable_id(value: object) -> bool:
    """A metadata value that is copied to the top level: what a keyword id may be. Any
    other value stays in ``usage_details`` only, and is not an error (1.0 accepted it)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and not value.isspace()
        and "\x00" not in value
    )


def service_type_text(value: object) -> str:
    # Existing callers pass an Enum; the contract carries its value.
    if isinstance(value, Enum):
        value = value.value
    return require_text("service_type", value)


def token_count(field: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT:  # the usual case, first
        return value
    # bool is an int subclass; True tokens is a caller bug, not a count of one.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsageEvent(field, f"must be a whole number, got {value!r}")
    if value < 0:
        raise InvalidUsageEvent(field, f"must not be negative, got {value}")
    if value > MAX_TOKEN_COUNT:
        raise InvalidUsageEvent(field, f"is too large (limit {MAX_TOKEN_COUNT})")
    return value


def unit_count(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidUsageEvent(field, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range: as infinite as it gets
        raise InvalidUsageEvent(field, "must be finite, got an integer too large") from None
    if not math.isfinite(number):
        raise InvalidUsageEvent(field, f"must be finite, got {value!r}")
    if number < 0:
        raise InvalidUsageEvent(field, f"must not be negative, got {value!r}")
    return number


def metadata_mapping(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if type(value) is dict and _plainmetadata_mapping(value):
        return value
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidUsageEvent("metadata", f"must be a dict, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidUsageEvent("metadata", f"keys must be strings, got {key!r}")
        if key in RESERVED_DETAIL_KEYS:
            raise InvalidUsageEvent("metadata", f"key {key!r} would overwrite a contract field")
        if isinstance(item, dict | list | tuple):
            _check_nested_keys(item)
    return value


def _plainmetadata_mapping(value: dict[Any, Any]) -> bool:
    """The usual metadata, checked in one pass: str keys, none reserved, no nested
    container (whose keys :func:`metadata_mapping` would walk). False only means: check it item
    by item, for the error."""
    for key, item in value.items():
        if type(key) is not str or key in RESERVED_DETAIL_KEYS or type(item) in _CONTAINERS:
            return False
    return True


#: Exact types only: a subclass of one goes the item-by-item way, which walks it.
_CONTAINERS: Final = frozenset({dict, list, tuple})


#: How deep ``metadata`` may nest; deeper is refused rather than walked.
MAX_METADATA_DEPTH: Final = 32


def _check_nested_keys(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> None:
    """Refuse non-string keys inside nested objects too. The JSON encoder would turn
    ``1``/``True``/``None`` keys into ``"1"``/``"true"``/``"null"``, which can collide with
    a real key, and billing refuses a payload with a duplicate key: such an event would be
    written and shipped, then never billed. The walk is bounded, so a cycle ends here."""
    stack: list[tuple[Any, int]] = [(value, 2)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidUsageEvent(
                "metadata", f"is nested deeper than {MAX_METADATA_DEPTH} levels"
            )
        items: Iterable[Any]
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    raise InvalidUsageEvent(
                        "metadata", f"keys must be strings at every level, got {key!r}"
                    )
            items = node.values()
        else:
            items = node
        stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list | tuple))
