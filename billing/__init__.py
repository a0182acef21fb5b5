"""The billing consumer: usage events from NATS JetStream, billed exactly once into a ledger.

Public API::

    from billing import BillingConfig, BillingConsumer, BillingDatabase

    async with BillingDatabase(url) as db:          # prices, report, audit
        await db.set_price("gpt-4", "token", "0.00003")
    consumer = BillingConsumer(BillingConfig(database_url=url, nats_url=nats_url))
    await consumer.run(stop_event)                  # a service, until stop_event is set
    await consumer.drain(idle_timeout=1.0)          # or: until idle (tests, demo)

Modules, one job each: ``decode`` (the strict contract decoder), ``pricing`` (exact
charges, the rounding rule), ``store`` (every query), ``schema``/``types``/``migrations``
(the tables), ``jetstream`` (stream and durable consumer), ``consumer`` (the loop),
``database`` (the tables behind one object), ``report`` (report shapes and table),
``config`` and ``cli`` (``usage-billing``).
"""

from __future__ import annotations

from billing.config import BillingConfig
from billing.consumer import BillingConsumer, ConsumerStats
from billing.database import BillingDatabase
from billing.errors import BillingConfigError, BillingError, InvalidPayload
from billing.report import Audit, BillingReport, UnpricedProduct, UserTotals

__all__ = [
    "Audit",
    "BillingConfig",
    "BillingConfigError",
    "BillingConsumer",
    "BillingDatabase",
    "BillingError",
    "BillingReport",
    "ConsumerStats",
    "InvalidPayload",
    "UnpricedProduct",
    "UserTotals",
]
