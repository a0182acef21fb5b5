"""Errors of the shipper, in the project's one error family (:class:`OutboxError`).

The split that matters is *whose fault* a failure is:

* :class:`TransientError` — the path to JetStream is not there (NATS down, no stream
  responders, leader election, connection closed). Rows are handed back untouched and the
  loop backs off; no row's attempts are burnt.
* a per-row failure (a row JetStream refuses or times out alone) is not an exception
  here: the publisher reports it per row and the row gets backoff or goes to ``dead``.
"""

from __future__ import annotations

from outbox.errors import ConfigError, OutboxError

__all__ = [
    "ConfigError",
    "DiscoveryError",
    "LeaseLost",
    "SideTaskDied",
    "StreamMismatch",
    "TransientError",
]


class TransientError(OutboxError):
    """JetStream cannot be reached right now; try the same rows again later."""


class DiscoveryError(OutboxError):
    """Consul could not be asked, or named no healthy NATS server."""


class StreamMismatch(ConfigError):
    """An existing stream does not fit what the shipper publishes; an operator must act."""


class LeaseLost(OutboxError):
    """Another shipper holds this outbox's lease; this one must stop claiming."""


class SideTaskDied(OutboxError):
    """A task the shipper runs beside its loop (the lease keeper) ended while it ran."""
