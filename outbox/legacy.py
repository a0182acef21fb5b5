"""Drop-in replacement for the legacy ``_publish_usage_event`` method of model services.

The old method opened a NATS connection and a Consul look-up per event and lost the event
on any failure. This one records the event in the outbox and returns ``True`` once the
row is committed; the shipper does the network part later. It keeps the old promise
of never raising into the request path: a refused or unwritable event returns ``False``
and is logged at ERROR with the field, the reason and the whole event, so an operator can
recover it from the log.
"""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy.engine import make_url

from outbox.errors import InvalidUsageEvent, OutboxStoreError
from outbox.service import URL_ENV, Outbox
from outbox.sqlite import sqlite_file

logger = logging.getLogger("outbox.legacy")

_default_outbox: Outbox | None = None


def default_outbox() -> Outbox:
    """The process-wide outbox used when a service sets none (``USAGE_OUTBOX_URL``)."""
    global _default_outbox
    if _default_outbox is None:
        _default_outbox = Outbox.from_env()
    return _default_outbox


class UsageEventPublisherMixin:
    """Gives a service with ``provider_name`` and ``model_name`` the legacy method.

    Set ``usage_outbox`` (class or instance attribute) to choose the outbox; otherwise
    :func:`default_outbox` is used.
    """

    provider_name: str
    model_name: str
    usage_outbox: ClassVar[Outbox | None] = None

    async def _publish_usage_event(
        self,
        user_id: str,
        service_type: str | Enum,
        operation: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        input_units: float | None = None,
        output_units: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        event: dict[str, Any] = {
            "user_id": user_id,
            "product_id": getattr(self, "model_name", None),
            "provider": getattr(self, "provider_name", None),
            "operation": operation,
            "service_type": service_type,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_units": input_units,
            "output_units": output_units,
            "metadata": metadata,
        }
        try:
            outbox = self.usage_outbox or default_outbox()  # inside: nothing may escape
            await outbox.record(**event)
        except InvalidUsageEvent as exc:
            logger.error(
                "usage event refused: %s; event=%r",
                exc,
                event,
                extra={"action": "usage_event_refused", "field": exc.field, "event": event},
            )
            return False
        except Exception as exc:
            # Billing must never break the request; the event goes to the log instead, in
            # one line per call (a traceback per call buried the events among ~110 lines
            # each; check_usage_outbox() at start-up is where a broken outbox is loud).
            logger.error(
                "usage event not recorded: %s; event=%r",
                " ".join(str(exc).split()),
                event,
                extra={"action": "usage_event_not_recorded", "event": event},
            )
            return False
        return True

    @classmethod
    async def check_usage_outbox(cls) -> str:
        """Open the outbox this service records into, once, at start-up: returns where
        it is (and logs it); raises :class:`~outbox.errors.OutboxStoreError` with one line
        when it cannot be opened. Without ``usage_outbox`` and ``USAGE_OUTBOX_URL`` the
        outbox is ``./usage-outbox.db`` in the working directory, which is logged as a
        warning: a shipper elsewhere would never see those events."""
        outbox = cls.usage_outbox or default_outbox()
        where = _where(outbox.url)
        if cls.usage_outbox is None and URL_ENV not in os.environ:
            logger.warning(
                "%s is not set: usage events go to %s, in the working directory",
                URL_ENV,
                where,
                extra={"action": "usage_outbox_default"},
            )
        try:
            await outbox.open()
        except OutboxStoreError as exc:
            cause = exc.__cause__ or exc
            reason = getattr(cause, "orig", None) or cause  # the driver's own words
            raise OutboxStoreError(f"usage outbox {where} cannot be used: {reason}") from exc
        logger.info("usage events go to outbox %s", where, extra={"action": "usage_outbox"})
        return where


def _where(url: str) -> str:
    """An outbox URL as an operator looks for it: the absolute file path for SQLite."""
    path = sqlite_file(url)
    return str(Path(path).resolve()) if path is not None else redact(url)


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
