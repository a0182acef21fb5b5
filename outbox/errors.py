"""One error family for the whole project.

Callers catch :class:`OutboxError` for anything this package raises on purpose; the
subclasses say which layer refused and why. Driver errors are translated at the edge
with ``raise ... from exc`` so the original stays attached.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error usage-outbox raises on purpose."""


class InvalidUsageEvent(OutboxError, ValueError):
    """A usage event was refused at write time; nothing was written.

    ``field`` names the offending argument (``user_id``, ``metadata``, ``usage``, ...)
    and ``reason`` says what is wrong with it, so the message is useful in a log line.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class OutboxStoreError(OutboxError):
    """The outbox table could not be read or written (disk full, locked, bad schema)."""


class ConfigError(OutboxError):
    """A setting is missing or wrong; raised at start-up with a one-line message."""
