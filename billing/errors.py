"""The billing consumer's error family.

``billing`` is meant to be run as is or copied by a billing team, so it keeps its own small
family instead of importing the outbox's: :class:`BillingError` is the base;
:class:`InvalidPayload` says why a message cannot be billed (it is kept in
``rejected_events`` with that reason); :class:`BillingConfigError` is a one-line start-up
problem.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base class of every error the billing package raises on purpose."""


class InvalidPayload(BillingError, ValueError):
    """A message is not valid JSON or breaks the usage event contract.

    ``reason`` is one line naming the field and the problem; it is what
    ``rejected_events.reason`` records. ``event_id`` is set when the payload had a usable one.
    """

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


class BillingConfigError(BillingError):
    """A setting is missing or wrong; the message is one line naming it."""
