"""``BillingDatabase``: the billing tables behind one object, for the CLI, the demo, tests.

Each method is one short transaction over the queries of :mod:`billing.price_book`,
:mod:`billing.reading` and :mod:`billing.audit`::

    async with BillingDatabase("sqlite+aiosqlite:///billing.db") as db:
        await db.set_price("gpt-4", "token", Decimal("0.00003"))
        report = await db.report()      # per-user charges and balances, totals
        audit = await db.audit()        # ledger invariants; audit.ok
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import migrate
from billing.audit import audit
from billing.decode import UNIT_TYPES
from billing.engines import DEFAULT_DATABASE_URL, create_billing_engine
from billing.errors import BillingError
from billing.price_book import Price, list_prices, reprice_unpriced, set_price
from billing.pricing import parse_unit_price
from billing.reading import RejectedEvent, breakdown, event_states, rejected, report
from billing.report import Audit, BillingReport, BreakdownRow


class BillingDatabase:
    """The billing tables at ``url`` (or on ``engine``, which is then not disposed of)."""

    def __init__(
        self,
        url: str | sa.URL = DEFAULT_DATABASE_URL,
        *,
        engine: AsyncEngine | None = None,
        run_migrations: bool = True,
    ) -> None:
        self.engine = engine or create_billing_engine(url)
        self._owns_engine = engine is None
        self.run_migrations = run_migrations
        self._migrated = False

    async def migrate(self) -> None:
        await migrate.upgrade_engine(self.engine)
        self._migrated = True

    async def _ready(self) -> None:
        if self.run_migrations and not self._migrated:
            await self.migrate()

    async def close(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> Self:
        await self._ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- prices ----------------------------------------------------------------------------

    async def set_price(
        self, product_id: str, unit_type: str, unit_price: str | Decimal
    ) -> Decimal:
        """Set the price per unit; returns the exact price stored.

        Raises :class:`BillingError` (a ``PricingError`` for the price) with a one-line reason.
        """
        if not product_id:
            raise BillingError("product id must not be empty")
        if unit_type not in UNIT_TYPES:
            raise BillingError(f"unit type must be one of {sorted(UNIT_TYPES)}, got {unit_type!r}")
        price = parse_unit_price(unit_price)
        await self._ready()
        async with self.engine.begin() as conn:
            await set_price(conn, product_id, unit_type, price)
        return price

    async def set_prices(self, table: Mapping[tuple[str, str], str | Decimal]) -> None:
        """Set several prices: ``{(product_id, unit_type): price}``."""
        for (product_id, unit_type), price in table.items():
            await self.set_price(product_id, unit_type, price)

    async def prices(self) -> list[Price]:
        await self._ready()
        async with self.engine.connect() as conn:
            return await list_prices(conn)

    async def reprice(self, *, limit: int = 10_000) -> int:
        """Bill the unpriced records that have a price now; returns how many were billed."""
        await self._ready()
        async with self.engine.begin() as conn:
            return await reprice_unpriced(conn, limit=limit)

    # -- reading ---------------------------------------------------------------------------

    async def report(self) -> BillingReport:
        await self._ready()
        async with self.engine.connect() as conn:
            return await report(conn)

    async def breakdown(
        self, by: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[BreakdownRow]:
        """Usage and charges per user, product or day; see :func:`billing.reading.breakdown`."""
        await self._ready()
        async with self.engine.connect() as conn:
            return await breakdown(conn, by, since=since, until=until)

    async def audit(self) -> Audit:
        await self._ready()
        async with self.engine.connect() as conn:
            return await audit(conn)

    async def event_states(self) -> dict[str, str]:
        """``event_id -> "billed" | "unpriced"`` for every recorded event."""
        await self._ready()
        async with self.engine.connect() as conn:
            return await event_states(conn)

    async def rejected(self, *, limit: int = 100) -> list[RejectedEvent]:
        await self._ready()
        async with self.engine.connect() as conn:
            return await rejected(conn, limit=limit)
