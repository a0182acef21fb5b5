"""What billing has done, as data (for the demo and tests) and as a table (for people).

The data comes from :func:`billing.reading.report` and :func:`billing.audit.audit`; this
module only holds the shapes and the formatting, with no I/O.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

#: What a breakdown groups by (``usage-billing report --by``).
GROUPINGS: Final = ("user", "product", "day")


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
    out = aligned_table(headers, rows, total)
    out.append("")
    out.append(f"rejected events: {report.rejected_events}")
    if report.unpriced_products:
        out.append("unpriced products (set a price, then `usage-billing reprice`):")
        out.extend(
            f"  {p.product_id} per {p.unit_type}: {p.events} event(s)"
            for p in report.unpriced_products
        )
    return "\n".join(out)


# -- breakdowns ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    """Usage of one group (a user, a product or a day) in one unit type."""

    group: str
    unit_type: str
    billed_events: int
    unpriced_events: int
    #: The summed usage in ``unit_type``'s own unit (tokens, images, minutes...), exact.
    usage: Decimal
    charged: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "unit_type": self.unit_type,
            "billed_events": self.billed_events,
            "unpriced_events": self.unpriced_events,
            "usage": money(self.usage),
            "charged": money(self.charged),
        }


_BREAKDOWN_HEADERS: Final = ("unit", "billed", "unpriced", "usage", "charged")


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (CJK) characters take two, combining
    marks none, so a table of such ids still lines up."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _pad(text: str, width: int, *, right: bool) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def aligned_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], total: Sequence[str]
) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned, padded
    by :func:`display_width` so that wide (CJK) and combining characters line up too;
    a rule under the headers and above the ``total`` row."""
    table = [headers, *rows, total]
    widths = [max(display_width(r[i]) for r in table) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = _pad(cells[0], widths[0], right=False)
        rest = (_pad(c, w, right=True) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows), rule, line(total)]


def format_breakdown(rows: Sequence[BreakdownRow], by: str) -> str:
    """A breakdown as a plain-text table, then the event and charge totals."""
    cells = [
        (
            row.group,
            row.unit_type,
            str(row.billed_events),
            str(row.unpriced_events),
            money(row.usage),
            money(row.charged),
        )
        for row in rows
    ]
    total = (
        "TOTAL",
        "",
        str(sum(r.billed_events for r in rows)),
        str(sum(r.unpriced_events for r in rows)),
        "",
        money(sum((r.charged for r in rows), Decimal(0))),
    )
    return "\n".join(aligned_table((by, *_BREAKDOWN_HEADERS), cells, total))


def breakdown_csv(rows: Sequence[BreakdownRow], by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "unit_type", "billed_events", "unpriced_events", "usage", "charged"])
    for row in rows:
        data = row.as_dict()
        writer.writerow(
            [
                data[k]
                for k in (
                    "group",
                    "unit_type",
                    "billed_events",
                    "unpriced_events",
                    "usage",
                    "charged",
                )
            ]
        )
    return out.getvalue()


def breakdown_json(
    rows: Sequence[BreakdownRow], by: str, since: str | None, until: str | None
) -> str:
    return json.dumps(
        {
            "by": by,
            "since": since,
            "until": until,
            "rows": [
                {by: r.group, **{k: v for k, v in r.as_dict().items() if k != "group"}}
                for r in rows
            ],
        },
        indent=2,
        ensure_ascii=False,
    )
