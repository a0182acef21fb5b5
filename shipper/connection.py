"""The shipper's NATS connection: its reconnect policy, and the log lines a connection's
life gives.

nats-py gives up for good after ``max_reconnect_attempts`` and can only reconnect to
servers already in its pool, so the shipper treats a closed client as the end of that
connection: it re-resolves the servers (Consul may name new ones) and builds a new one
(:mod:`shipper.link`). Credentials, TLS and the refusal rules are shared with billing
(:mod:`usage_runtime.nats`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

from shipper.config import ShipperConfig
from usage_runtime.nats import auth_options_of, open_connection

logger = logging.getLogger("shipper.connection")


def connect_options(config: ShipperConfig) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: the shipper's reconnect policy, credentials
    and TLS."""
    options: dict[str, Any] = {
        "connect_timeout": config.connect_timeout,
        "max_reconnect_attempts": config.max_reconnect_attempts,
        "reconnect_time_wait": 1,
        "allow_reconnect": True,
        "name": "usage-shipper",
    }
    options.update(auth_options_of(config))
    return options


async def connect(
    config: ShipperConfig,
    servers: list[str],
    closed: asyncio.Event,
    *,
    attempt_failed: Callable[[Exception], None] | None = None,
) -> Client:
    """Connect to ``servers``; ``closed`` is set when the client gives up for good.
    ``attempt_failed`` hears each failed attempt of the first connect (nats-py makes
    several before it gives up), so an outage is known while it is being retried."""
    connected = False

    # ``closed`` already set means the shipper is closing this connection itself: a
    # state change worth a debug line, not a warning an operator has to look into.
    async def on_closed() -> None:
        level = logging.DEBUG if closed.is_set() else logging.WARNING
        logger.log(level, "nats connection closed", extra={"action": "nats_closed"})
        closed.set()

    async def on_disconnected() -> None:
        level = logging.DEBUG if closed.is_set() else logging.WARNING
        logger.log(level, "nats disconnected", extra={"action": "nats_disconnected"})

    async def on_reconnected() -> None:
        logger.info("nats reconnected", extra={"action": "nats_reconnected"})

    async def on_error(exc: Exception) -> None:
        logger.warning("nats error: %s", exc, extra={"action": "nats_error"})
        if not connected and attempt_failed is not None:
            attempt_failed(exc)

    client = await open_connection(
        servers,
        connect_options(config),
        error_cb=on_error,
        closed_cb=on_closed,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    connected = True
    url = client.connected_url
    logger.info(
        "connected to nats %s",
        f"{url.hostname}:{url.port}" if url else "?",  # the netloc may carry credentials
        extra={"action": "nats_connected"},
    )
    return client
