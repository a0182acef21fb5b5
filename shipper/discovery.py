"""Finding NATS: Consul's health API first, the configured servers as the fallback.

Consul is asked once per connection (not per event, as the legacy code did): the answer
becomes the client's server pool, and it is asked again only when a connection is given
up for good. If Consul cannot be asked, the shipper still ships, to the servers from the
environment, and says once why.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import consul

from shipper.config import ShipperConfig
from shipper.errors import DiscoveryError
from usage_runtime.redact import redact_url

logger = logging.getLogger("shipper.discovery")


def _ask_consul(config: ShipperConfig) -> list[str]:
    client = consul.Consul(
        host=config.consul_host,
        port=config.consul_port,
        scheme=config.consul_scheme,
        token=config.consul_token,
        # https: verified against the CA file, else the system's CAs; never switched off
        # (py-consul would otherwise read CONSUL_HTTP_SSL_VERIFY from the environment)
        verify=config.consul_ca_file or True,
        connections_timeout=config.consul_timeout,
    )
    if config.consul_token is not None:
        # py-consul lets CONSUL_HTTP_TOKEN in the environment override the token it is
        # given; the configured one (a flag beats the environment) is the one to send.
        client.token = config.consul_token
    _index, entries = client.health.service(config.consul_service, passing=True)
    servers: list[str] = []
    for entry in entries or []:
        servers.append(_server_url(entry))
    return servers


def _server_url(entry: dict[str, Any]) -> str:
    service = entry.get("Service") or {}
    # Consul leaves Service.Address empty when the service lives at its node's address.
    host = service.get("Address") or (entry.get("Node") or {}).get("Address")
    port = service.get("Port")
    if not host or not port:
        raise DiscoveryError(f"Consul entry without address or port: {entry!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"nats://{host}:{port}"


class Discovery:
    """Resolves the NATS server pool; remembers whether the last answer was a fallback."""

    def __init__(self, config: ShipperConfig) -> None:
        self.config = config
        self.source = "environment"
        self._warned = False

    async def servers(self) -> list[str]:
        if self.config.consul_host is None:
            self.source = "environment"
            return list(self.config.nats_servers)
        try:
            found = await asyncio.wait_for(
                asyncio.to_thread(_ask_consul, self.config), self.config.consul_timeout + 1
            )
            if not found:
                raise DiscoveryError(
                    f"Consul has no passing instance of service {self.config.consul_service!r}"
                )
        except Exception as exc:  # any Consul failure means: fall back, do not stop shipping
            if not self._warned:
                logger.warning(
                    "consul unavailable (%s); using %s",
                    exc,
                    ", ".join(redact_url(server) for server in self.config.nats_servers),
                    extra={"action": "discovery_fallback"},
                )
                self._warned = True
            self.source = "environment"
            return list(self.config.nats_servers)
        if self._warned or self.source != "consul":
            logger.info(
                "discovered nats servers %s from consul",
                ", ".join(found),
                extra={"action": "discovered", "servers": found},
            )
        self._warned = False
        self.source = "consul"
        return found
