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


class OutboxSchemaError(OutboxStoreError):
    """The outbox tables exist but do not match the schema this version needs; waiting
    will not change that, so the shipper stops with this one line."""


class MissingOutboxTable(OutboxStoreError):
    """The database has no ``usage_outbox`` table: nothing created it yet."""

    def __init__(self) -> None:
        super().__init__(
            "no usage_outbox table in this database: create it with `usage-shipper migrate "
            "--database-url URL`, or `await outbox.migrate.upgrade_engine(engine)` at "
            "start-up, or add outbox.metadata to your own migrations"
        )


class ConfigError(OutboxError):
    """A setting is missing or wrong; raised at start-up with a one-line message."""
