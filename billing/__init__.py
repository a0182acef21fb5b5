"""The billing consumer: usage events from NATS JetStream, billed exactly once into a ledger.

Public API::

    from billing import BillingConfig, BillingConsumer, BillingDatabase

    async with BillingDatabase(url) as db:          # prices, report, audit
        await db.set_price("gpt-4", "token", "0.00003")
    consumer = BillingConsumer(BillingConfig(database_url=url, nats_url=nats_url))
    await consumer.run(stop_event)                  # a service, until stop_event is set
    await consumer.drain(idle_timeout=1.0)          # or: until idle (tests, demo)

Modules, one job each: ``decode`` (the strict contract decoder), ``items`` (a batch's
deliveries and outcomes), ``pricing`` (exact charges, the rounding rule), ``apply`` (a
batch into the ledger in one transaction), ``ledger`` (wallet and debit writes),
``price_book`` (prices, repricing), ``reading`` and ``audit`` (queries that read),
``schema``/``types``/``migrations`` (the tables), ``jetstream`` (stream and durable
consumer), ``puller`` (batch fetches), ``connect``, ``consumer`` (the loop), ``settle``
(acks after commit), ``stats``, ``database`` (the tables behind one object), ``report``
(report shapes and table), ``config`` and ``cli`` (``usage-billing``); ``testing`` holds
seams for tests.
"""

from __future__ import annotations

from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from billing.database import BillingDatabase
from billing.errors import BillingConfigError, BillingError, InvalidPayload
from billing.report import Audit, BillingReport, UnpricedProduct, UserTotals
from billing.stats import ConsumerStats

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
