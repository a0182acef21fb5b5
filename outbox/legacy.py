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
from enum import Enum
from typing import Any, ClassVar

from outbox.errors import InvalidUsageEvent
from outbox.service import Outbox

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
            # Billing must never break the request; the event goes to the log instead.
            logger.error(
                "usage event not recorded: %s; event=%r",
                exc,
                event,
                exc_info=True,
                extra={"action": "usage_event_not_recorded", "event": event},
            )
            return False
        return True
