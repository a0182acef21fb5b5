"""usage-shipper: drains a usage outbox to NATS JetStream, at least once, idempotently."""

from __future__ import annotations

from shipper.config import ShipperConfig
from shipper.worker import Shipper, ShipperStats

__all__ = ["Shipper", "ShipperConfig", "ShipperStats"]
