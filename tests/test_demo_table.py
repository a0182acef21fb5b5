"""The demo's per-user table lines up whatever the user ids are made of (no servers)."""

from __future__ import annotations

from decimal import Decimal

from billing.report import BillingReport, UserTotals, display_width
from usage_demo.recording import user_table


def _user(user_id: str, billed: int, charged: str) -> UserTotals:
    return UserTotals(user_id, billed, 0, Decimal(charged), -Decimal(charged))


def test_a_cjk_user_id_lines_up_with_the_others() -> None:
    report = BillingReport(
        users=(
            _user("user-01", 12, "0.0042"),
            _user("用户-甲", 3, "1.5"),
            _user("e\u0301", 1, "0"),
        ),
        billed_events=16,
        unpriced_events=0,
        rejected_events=0,
        total_charged=Decimal("1.5042"),
        total_balance=Decimal("-1.5042"),
    )
    lines = user_table(report)
    # Every column is right-aligned after the first, so every line ends in the same
    # terminal column; with character-count padding the CJK row ends 3 columns late.
    assert len({display_width(line) for line in lines}) == 1, "\n".join(lines)
    cjk = next(line for line in lines if line.startswith("用户-甲"))
    ascii_row = next(line for line in lines if line.startswith("user-01"))
    # The billed counts end in the same column too.
    assert display_width(cjk[: cjk.index(" 3 ") + 2]) == display_width(
        ascii_row[: ascii_row.index("12") + 2]
    )
    assert lines[-1].startswith("total")
