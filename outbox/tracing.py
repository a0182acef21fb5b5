"""W3C Trace Context for usage events: taken from the caller's active OpenTelemetry span.

``opentelemetry-api`` is optional (``pip install 'usage-outbox[otel]'``): without it, or
outside an active span, nothing is captured and nothing changes. The values are captured at
write time and published as the ``traceparent``/``tracestate`` headers, so billing's work
can be linked to the request that caused it; the shipper starts no span of its own.
"""

from __future__ import annotations

import re
from typing import Final

from outbox.errors import InvalidUsageEvent

try:  # the optional extra
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised by installs without the extra
    _propagator = None
else:
    _propagator = TraceContextTextMapPropagator()

#: version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1). All-zero
#: ids are invalid, and version ff is forbidden.
_TRACEPARENT: Final = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
#: Printable ASCII, at most 512 characters: what the spec lets a tracestate hold.
_TRACESTATE: Final = re.compile(r"[\x20-\x7e]{1,512}")

TraceContext = tuple[str, str | None]


def active_trace_context() -> TraceContext | None:
    """``(traceparent, tracestate or None)`` of the active span, or None (no span, or no
    ``opentelemetry-api``)."""
    if _propagator is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)  # writes nothing unless the current span context is valid
    traceparent = carrier.get("traceparent")
    if traceparent is None:
        return None
    return traceparent, carrier.get("tracestate") or None


def trace_context(traceparent: object, tracestate: object) -> TraceContext | None:
    """The trace context to store: the caller's, checked, else the active span's."""
    if traceparent is None:
        if tracestate is not None:
            raise InvalidUsageEvent("tracestate", "given without a traceparent")
        return active_trace_context()
    if not isinstance(traceparent, str) or not _TRACEPARENT.fullmatch(traceparent):
        raise InvalidUsageEvent(
            "traceparent",
            f"is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>): {traceparent!r}",
        )
    if tracestate is not None and (
        not isinstance(tracestate, str) or not _TRACESTATE.fullmatch(tracestate)
    ):
        raise InvalidUsageEvent(
            "tracestate", "must be printable ASCII text of at most 512 characters"
        )
    return traceparent, tracestate
