"""Connecting the billing consumer to NATS: the options it needs, and waiting for a broker
that is not up yet without missing a stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient

from billing.config import BillingConfig
from billing.errors import BillingConfigError
from usage_runtime.nats import CREDENTIAL_HINT, NatsRefused, auth_options_of, open_connection
from usage_runtime.signals import sleep_unless_stopped, unless_stopped

logger = logging.getLogger("billing.consumer")

CONNECT_BACKOFF: Final = 2.0


async def connect(
    config: BillingConfig,
    stop: asyncio.Event | None,
    *,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
) -> NatsClient | None:
    """Connect; with a ``stop`` event, keep trying until NATS answers (None when ``stop``
    was set first); without one, the first failure raises.

    Refused credentials or TLS (see :func:`usage_runtime.nats.open_connection`) are a
    :class:`BillingConfigError` either way: waiting cannot fix a setting.
    """
    while True:
        try:
            options = {
                "name": "usage-billing",
                "connect_timeout": int(max(1, config.connect_timeout)),
                "max_reconnect_attempts": -1,  # once connected, outlive broker restarts
                "reconnect_time_wait": 1,
                **auth_options_of(config),
            }
            connecting = open_connection(
                config.nats_servers,
                options,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
            if stop is None:
                return await connecting
            # nats-py's first connect retries for ever (max_reconnect_attempts=-1)
            # and never looks at ``stop``: race it, so a stop ends the wait at once.
            return await unless_stopped(connecting, stop)
        except NatsRefused as exc:
            raise BillingConfigError(
                f"nats refused the connection: {exc} ({CREDENTIAL_HINT})"
            ) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            if stop is None:
                raise
            logger.warning(
                "cannot reach NATS (%r); retrying", exc, extra={"action": "nats_unreachable"}
            )
            await sleep_unless_stopped(stop, CONNECT_BACKOFF)
            if stop.is_set():
                return None
