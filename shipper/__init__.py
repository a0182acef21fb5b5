"""usage-shipper: drains a usage outbox to NATS JetStream, at least once, idempotently."""

from __future__ import annotations

from shipper.config import ShipperConfig
from shipper.stats import ShipperStats
from shipper.worker import Shipper

__all__ = ["Shipper", "ShipperConfig", "ShipperStats"]
