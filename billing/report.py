"""What billing has done, as data (for the demo and tests) and as a table (for people).

The data comes from :func:`billing.store.report` and :func:`billing.store.audit`; this
module only holds the shapes and the formatting, with no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


def money(value: Decimal) -> str:
    """A decimal in plain notation, every stored place kept (``str`` would give ``7.5E-8``)."""
    return f"{value:f}"


@dataclass(frozen=True, slots=True)
class UserTotals:
    user_id: str
    billed_events: int
    unpriced_events: int
    #: Sum of the user's charges (exact).
    charged: Decimal
    #: Wallet balance: starts at 0, each debit subtracts its charge (so normally -charged).
    balance: Decimal


@dataclass(frozen=True, slots=True)
class UnpricedProduct:
    product_id: str
    unit_type: str
    events: int


@dataclass(frozen=True, slots=True)
class BillingReport:
    users: tuple[UserTotals, ...]
    billed_events: int
    unpriced_events: int
    rejected_events: int
    total_charged: Decimal
    total_balance: Decimal
    #: Which (product, unit type) pairs lack a price, and how many events wait on each.
    unpriced_products: tuple[UnpricedProduct, ...] = ()

    @property
    def recorded_events(self) -> int:
        """Events in ``billing_records`` (billed + unpriced): each event_id once."""
        return self.billed_events + self.unpriced_events

    def user(self, user_id: str) -> UserTotals | None:
        return next((u for u in self.users if u.user_id == user_id), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; Decimals become strings so no digit is lost."""
        return {
            "users": [
                {
                    "user_id": u.user_id,
                    "billed_events": u.billed_events,
                    "unpriced_events": u.unpriced_events,
                    "charged": money(u.charged),
                    "balance": money(u.balance),
                }
                for u in self.users
            ],
            "billed_events": self.billed_events,
            "unpriced_events": self.unpriced_events,
            "rejected_events": self.rejected_events,
            "total_charged": money(self.total_charged),
            "total_balance": money(self.total_balance),
            "unpriced_products": [
                {"product_id": p.product_id, "unit_type": p.unit_type, "events": p.events}
                for p in self.unpriced_products
            ],
        }


@dataclass(frozen=True, slots=True)
class Audit:
    """Cross-checks of the ledger. ``problems`` is empty when every invariant holds:

    each billed record has exactly one debit of ``-charge``, no unpriced record has one,
    no debit lacks its record, and each wallet's balance is the sum of its transactions.
    """

    records: int
    transactions: int
    wallets: int
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def format_table(report: BillingReport) -> str:
    """The report as a plain-text table, one line per user, then the totals."""
    headers = ("user", "billed", "unpriced", "charged", "balance")
    rows = [
        (
            u.user_id,
            str(u.billed_events),
            str(u.unpriced_events),
            money(u.charged),
            money(u.balance),
        )
        for u in report.users
    ]
    total = (
        "TOTAL",
        str(report.billed_events),
        str(report.unpriced_events),
        money(report.total_charged),
        money(report.total_balance),
    )
    widths = [max(len(r[i]) for r in [headers, *rows, total]) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    out = [line(headers), rule, *(line(r) for r in rows), rule, line(total), ""]
    out.append(f"rejected events: {report.rejected_events}")
    if report.unpriced_products:
        out.append("unpriced products (set a price, then `usage-billing reprice`):")
        out.extend(
            f"  {p.product_id} per {p.unit_type}: {p.events} event(s)"
            for p in report.unpriced_products
        )
    return "\n".join(out)
