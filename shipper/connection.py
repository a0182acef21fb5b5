"""Connecting to NATS with the configured credentials and TLS.

nats-py gives up for good after ``max_reconnect_attempts`` and can only reconnect to
servers already in its pool, so the shipper treats a closed client as the end of that
connection: it re-resolves the servers (Consul may name new ones) and builds a new one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client

from shipper.config import ShipperConfig

logger = logging.getLogger("shipper.connection")


def tls_context(config: ShipperConfig) -> ssl.SSLContext | None:
    if not (config.tls_ca_file or config.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    if config.tls_cert_file and config.tls_key_file:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def connect_options(config: ShipperConfig) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` carrying credentials and TLS."""
    options: dict[str, Any] = {
        "connect_timeout": config.connect_timeout,
        "max_reconnect_attempts": config.max_reconnect_attempts,
        "reconnect_time_wait": 1,
        "allow_reconnect": True,
        "name": "usage-shipper",
    }
    if config.nats_user:
        options["user"] = config.nats_user
        options["password"] = config.nats_password or ""
    if config.nats_token:
        options["token"] = config.nats_token
    if config.nats_nkey_seed_file:
        options["nkeys_seed"] = config.nats_nkey_seed_file
    if config.nats_creds_file:
        options["user_credentials"] = config.nats_creds_file
    context = tls_context(config)
    if context is not None:
        options["tls"] = context
    return options


async def connect(config: ShipperConfig, servers: list[str], closed: asyncio.Event) -> Client:
    """Connect to ``servers``; ``closed`` is set when the client gives up for good."""

    async def on_closed() -> None:
        logger.warning("nats connection closed", extra={"action": "nats_closed"})
        closed.set()

    async def on_disconnected() -> None:
        logger.warning("nats disconnected", extra={"action": "nats_disconnected"})

    async def on_reconnected() -> None:
        logger.info("nats reconnected", extra={"action": "nats_reconnected"})

    async def on_error(exc: Exception) -> None:
        logger.warning("nats error: %s", exc, extra={"action": "nats_error"})

    client: Client = await nats.connect(
        servers=servers,
        closed_cb=on_closed,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=on_error,
        **connect_options(config),
    )
    url = client.connected_url
    logger.info(
        "connected to nats %s",
        f"{url.hostname}:{url.port}" if url else "?",  # the netloc may carry credentials
        extra={"action": "nats_connected"},
    )
    return client
