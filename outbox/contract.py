"""The usage event wire contract: encoding validated fields, with no I/O.

Everything billing relies on is decided here, once: which inputs are refused (each
field's check is in :mod:`outbox.validation`; the order of the checks is here), how the
usage amount is computed, the ``usage_details`` layout, the subject, the headers, the
``event_id`` and the ``timestamp``. The write API and the legacy drop-in both call
:func:`build_usage_event`; the shipper only republishes what this module produced.
See ``shared/contract/usage-event.md`` (copied in ``docs/usage-event.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from outbox.errors import InvalidUsageEvent
from outbox.ids import iso_timestamp, new_event_id, new_event_ids
from outbox.subject import MAX_TOKEN_LENGTH, SUBJECT_PREFIX, product_token
from outbox.tracing import TraceContext, active_trace_context, trace_context
from outbox.validation import (
    ID_FIELDS,
    MAX_ID_LENGTH,
    MAX_METADATA_DEPTH,
    MAX_TOKEN_COUNT,
    MAX_USAGE_AMOUNT,
    RESERVED_DETAIL_KEYS,
    liftable_id,
    metadata_mapping,
    require_id,
    require_text,
    service_type_text,
    token_count,
    unit_count,
)

# The bounds and field names the validation owns, importable from the contract too.
__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "EVENT_TYPE",
    "IDEMPOTENCY_PREFIX",
    "ID_FIELDS",
    "MAX_ID_LENGTH",
    "MAX_METADATA_DEPTH",
    "MAX_TOKEN_COUNT",
    "MAX_USAGE_AMOUNT",
    "RESERVED_DETAIL_KEYS",
    "EncodedEvent",
    "UsageEvent",
    "build_usage_event",
    "build_usage_events",
    "contract_headers",
]

EVENT_TYPE: Final = "billing.usage.recorded"
#: Default refusal threshold for one encoded payload. NATS's default ``max_payload`` is
#: 1 MiB; a usage record is ~400 bytes, so anything near this limit is a caller bug
#: (a prompt pasted into metadata), and refusing it early beats dead-lettering it later.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 64 * 1024
#: :data:`ID_FIELDS` as a set: does ``metadata`` hold any id at all (usually not).
_ID_FIELD_SET: Final = frozenset(ID_FIELDS)
#: ``idempotency_key`` is this prefix and the event id: the ``<producer>:<key>`` form of
#: the platform's producer library, and what the real billing de-duplicates on.
IDEMPOTENCY_PREFIX: Final = "usage-outbox:"


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
    #: ``(traceparent, tracestate)`` captured at write time, published as headers.
    trace: TraceContext | None = None

    @property
    def headers(self) -> dict[str, str]:
        return contract_headers(self.event_id, self.trace)


def contract_headers(event_id: str, trace: TraceContext | None = None) -> dict[str, str]:
    """The NATS headers of an event; ``Nats-Msg-Id`` is JetStream's de-duplication key,
    ``traceparent``/``tracestate`` (W3C Trace Context) link billing to the request."""
    headers = {"event_type": EVENT_TYPE, "Nats-Msg-Id": event_id}
    if trace is not None:
        headers["traceparent"] = trace[0]
        if trace[1] is not None:
            headers["tracestate"] = trace[1]
    return headers


def _top_level_ids(metadata: Mapping[str, Any], given: tuple[object, ...]) -> str:
    """The ids' JSON members (``,"session_id":"..."``...) from keywords and metadata."""
    members = ""
    if given == _NO_IDS:  # the usual case: only metadata holds ids
        for field in ID_FIELDS:
            if field in metadata and liftable_id(lifted := metadata[field]):
                members += f',"{field}":{_quote(lifted)}'
        return members
    for field, keyword in zip(ID_FIELDS, given, strict=True):
        if keyword is not None:
            value = require_id(field, keyword)
            if field in metadata and metadata[field] != value:
                raise InvalidUsageEvent(
                    field,
                    f"is {value!r} but metadata[{field!r}] is {metadata[field]!r}; give one",
                )
        elif liftable_id(in_metadata := metadata.get(field)):
            value = in_metadata  # type: ignore[assignment]  # checked by liftable_id
        else:
            continue
        members += f',"{field}":{_quote(value)}'
    return members


def _make_json_encoder() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(ensure_ascii=False, separators=(",", ":"), allow_nan=False)``, made once.

    allow_nan=False: NaN/Infinity are not JSON and billing's decoder would refuse them.
    ``json.dumps`` with options builds a new encoder per call; this builds the C encoder
    once. It runs without a circular-reference table (that table cannot be shared between
    calls), so a self-referencing ``metadata`` ends in RecursionError, refused below.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    refuse = json.JSONEncoder().default  # raises "Object of type X is not JSON serializable"
    encoder = c_make_encoder(
        None, refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(document: dict[str, Any]) -> str:
        return "".join(encoder(document, 0))

    return encode


_json_encode = _make_json_encoder()
_NO_IDS: Final = (None, None, None, None, None)


#: A str as a JSON string literal, exactly as json.dumps(ensure_ascii=False) writes it.
_quote: Callable[[str], str] = json.encoder.encode_basestring


#: ``(event_id, subject, payload, created_at, trace)``: one validated, encoded event of a
#: batch (:func:`build_usage_events`), a plain tuple because batches build thousands a
#: second (a frozen dataclass costs ~30x more to make).
EncodedEvent = tuple[str, str, bytes, float, TraceContext | None]

#: The keywords an event of a batch may hold (:class:`outbox.write.UsageArgs`); the five
#: without a default must be there.
_ARGUMENTS: Final = frozenset(
    {
        "user_id",
        "product_id",
        "provider",
        "operation",
        "service_type",
        "input_tokens",
        "output_tokens",
        "input_units",
        "output_units",
        "metadata",
        *ID_FIELDS,
        "traceparent",
        "tracestate",
    }
)
_REQUIRED: Final = frozenset({"user_id", "product_id", "provider", "operation", "service_type"})


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
    organization_id: object = None,
    subscription_id: object = None,
    session_id: object = None,
    request_id: object = None,
    agent_id: object = None,
    traceparent: object = None,
    tracestate: object = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    now: float | None = None,
) -> UsageEvent:
    """Validate the legacy arguments (and the 1.1 ids and trace context) and encode them
    as the contract says.

    Raises :class:`InvalidUsageEvent` naming the field and the reason; on success the
    returned event has a fresh time-ordered ``event_id`` (UUIDv7) and the write time.
    Without ``traceparent`` the active OpenTelemetry span's context is taken, if any.
    """
    if now is None:
        now_ns = time.time_ns()
        created_at = now_ns / 1e9
    else:
        now_ns, created_at = round(now * 1e9), now
    event_id = new_event_id(now_ns)
    subject, payload, trace = _encode(
        user_id,
        product_id,
        provider,
        operation,
        service_type,
        input_tokens,
        output_tokens,
        input_units,
        output_units,
        metadata,
        (organization_id, subscription_id, session_id, request_id, agent_id),
        traceparent,
        tracestate,
        _LOOK_UP,
        event_id,
        iso_timestamp(now_ns),
        max_payload_bytes,
    )
    return UsageEvent(
        event_id=event_id, subject=subject, payload=payload, created_at=created_at, trace=trace
    )


def build_usage_events(
    events: Iterable[Mapping[str, Any]], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> list[EncodedEvent]:
    """:func:`build_usage_event` for each mapping of keywords, validated exactly alike
    (the first refused event raises; nothing is returned), as one batch written at one
    instant: one ``timestamp``/``created_at`` for all, ids made in one go
    (:func:`outbox.ids.new_event_ids`, distinct and in order), and the active span's trace
    context read once (the same span is active for the whole call)."""
    batch = events if isinstance(events, list) else list(events)
    if not batch:
        return []
    now_ns = time.time_ns()
    created_at = now_ns / 1e9
    stamp = iso_timestamp(now_ns)
    active: object = _LOOK_UP  # TraceContext | None once read
    built: list[EncodedEvent] = []
    append = built.append
    for args, event_id in zip(batch, new_event_ids(now_ns, len(batch)), strict=True):
        if type(args) is not dict or not _REQUIRED <= args.keys() <= _ARGUMENTS:
            # Anything unusual (another Mapping, a missing or unknown keyword) goes the
            # keyword way, so it fails (TypeError) or passes exactly as a single write.
            one = build_usage_event(**args, max_payload_bytes=max_payload_bytes)
            append((one.event_id, one.subject, one.payload, one.created_at, one.trace))
            continue
        get = args.get
        traceparent, tracestate = get("traceparent"), get("tracestate")
        if active is _LOOK_UP and traceparent is None and tracestate is None:
            active = active_trace_context()
        subject, payload, trace = _encode(
            args["user_id"],
            args["product_id"],
            args["provider"],
            args["operation"],
            args["service_type"],
            get("input_tokens"),
            get("output_tokens"),
            get("input_units"),
            get("output_units"),
            get("metadata"),
            (
                get("organization_id"),
                get("subscription_id"),
                get("session_id"),
                get("request_id"),
                get("agent_id"),
            ),
            traceparent,
            tracestate,
            active,
            event_id,
            stamp,
            max_payload_bytes,
        )
        append((event_id, subject, payload, created_at, trace))
    return built


#: Stands for "the active span's context, not read yet" (None means: there is none).
_LOOK_UP: Final = object()


def _encode(
    user_id: object,
    product_id: object,
    provider: object,
    operation: object,
    service_type: object,
    input_tokens: object,
    output_tokens: object,
    input_units: object,
    output_units: object,
    metadata: object,
    ids: tuple[object, ...],
    traceparent: object,
    tracestate: object,
    active: object,  # TraceContext | None, or _LOOK_UP
    event_id: str,
    stamp: str,
    max_payload_bytes: int,
) -> tuple[str, bytes, TraceContext | None]:
    """Validate one event's arguments, in the order that decides which field a refusal
    names, and encode it: ``(subject, payload, trace)``. ``active`` is the active span's
    trace context when the caller read it already (a batch reads it once), else
    :data:`_LOOK_UP`."""
    user = require_id("user_id", user_id)
    product = require_id("product_id", product_id)
    provider_text = require_text("provider", provider)
    operation_text = require_text("operation", operation)
    service = service_type_text(service_type)
    tokens_in = token_count("input_tokens", input_tokens)
    tokens_out = token_count("output_tokens", output_tokens)
    units_in = unit_count("input_units", input_units)
    units_out = unit_count("output_units", output_units)
    extra = metadata_mapping(metadata)
    top_ids = (
        _top_level_ids(extra, ids)
        if ids != _NO_IDS or (extra and not _ID_FIELD_SET.isdisjoint(extra))
        else ""
    )
    trace: TraceContext | None
    if traceparent is not None or tracestate is not None or active is _LOOK_UP:
        trace = trace_context(traceparent, tracestate)
    else:
        trace = active  # type: ignore[assignment]  # read for this call already

    usage_amount: int | float
    if tokens_in is not None or tokens_out is not None:
        # One count alone is billed as that count (embeddings send only input tokens).
        usage_amount, unit_type = (tokens_in or 0) + (tokens_out or 0), "token"
        if usage_amount > MAX_USAGE_AMOUNT:
            raise InvalidUsageEvent("usage", f"token total is too large (limit {MAX_USAGE_AMOUNT})")
    elif units_in is not None:
        usage_amount, unit_type = units_in, "request"
        if usage_amount > MAX_USAGE_AMOUNT:
            raise InvalidUsageEvent("usage", f"input_units is too large (limit {MAX_USAGE_AMOUNT})")
    else:
        raise InvalidUsageEvent(
            "usage", "nothing to bill: give input_tokens/output_tokens or input_units"
        )

    token = product_token(product)
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidUsageEvent(
            "product_id", f"is too long for a subject token (limit {MAX_TOKEN_LENGTH} encoded)"
        )

    # The payload is spelled out around JSON-encoded values (the C string encoder, the
    # number reprs json uses, the prebuilt encoder for metadata): the same bytes as
    # json.dumps of the document, in the contract's key order, at half the cost. The
    # tests check it against json.dumps for every accepted input they generate.
    counts = ""
    if tokens_in is not None:
        counts += f',"input_tokens":{int.__repr__(tokens_in)}'
    if tokens_out is not None:
        counts += f',"output_tokens":{int.__repr__(tokens_out)}'
    if units_in is not None:
        counts += f',"input_units":{float.__repr__(units_in)}'
    if units_out is not None:
        counts += f',"output_units":{float.__repr__(units_out)}'
    amount = int.__repr__(usage_amount) if unit_type == "token" else float.__repr__(usage_amount)

    try:
        extra_json = _json_encode(extra if type(extra) is dict else dict(extra)) if extra else ""
        payload = (
            f'{{"event_id":"{event_id}","idempotency_key":"{IDEMPOTENCY_PREFIX}{event_id}",'
            f'"user_id":{_quote(user)},"product_id":{_quote(product)},"usage_amount":{amount},'
            f'"unit_type":"{unit_type}"{top_ids},'
            f'"usage_details":{{"provider":{_quote(provider_text)},"model":{_quote(product)},"operation":{_quote(operation_text)},'
            f'"service_type":{_quote(service)}{counts}'
            f"{',' + extra_json[1:-1] if len(extra_json) > 2 else ''}}},"
            f'"timestamp":"{stamp}"}}'
        ).encode()
    # The text fields were checked already, so an encoding failure is in metadata.
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidUsageEvent("metadata", f"is not JSON-serialisable: {exc}") from exc
    except RecursionError:  # nested deeper than the encoder can walk
        raise InvalidUsageEvent("metadata", "is nested too deeply to encode") from None
    if len(payload) > max_payload_bytes:
        raise InvalidUsageEvent(
            "payload",
            f"encoded event is {len(payload)} bytes, over the {max_payload_bytes}-byte limit",
        )
    return f"{SUBJECT_PREFIX}.{token}", payload, trace
