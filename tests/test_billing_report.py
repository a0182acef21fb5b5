"""``usage-billing report``: breakdowns by user, product and day, time windows, formats."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from billing.apply import apply_batch
from billing.cli import main
from billing.database import BillingDatabase
from billing.decode import decode_usage_event
from billing.items import Delivery, Item, Usage
from billing.report import display_width

EVENTS = [
    # user, product, unit, amount, timestamp
    ("alice", "gpt-4", "token", 1000, "2026-11-01T10:00:00+00:00"),
    ("alice", "gpt-4", "token", 500, "2026-11-02T10:00:00+00:00"),
    ("山田太郎", "flux-pro", "image", 3, "2026-11-02T23:30:00-02:00"),  # 11-03 in UTC
    ("山田太郎", "whisper", "minute", 2.5, "2026-11-03T08:00:00+00:00"),
    ("bob", "whisper", "minute", 1.25, "2026-11-03T09:00:00+00:00"),
]


def _payload(i: int, user: str, product: str, unit: str, amount: float, at: str) -> bytes:
    return json.dumps(
        {
            "schema_version": "1.0",
            "event_id": f"0190e1a0-0000-7000-8000-{i:012d}",
            "user_id": user,
            "product_id": product,
            "usage_amount": amount,
            "unit_type": unit,
            "timestamp": at,
        },
        ensure_ascii=False,
    ).encode()


def _seed(path: Path) -> None:
    async def seed() -> None:
        async with BillingDatabase(f"sqlite+aiosqlite:///{path}") as db:
            await db.set_price("gpt-4", "token", "0.00003")
            await db.set_price("flux-pro", "image", "0.04")
            # whisper has no price: its events are recorded unpriced.
            items: list[Item] = []
            for i, event in enumerate(EVENTS, 1):
                payload = _payload(i, *event)
                delivery = Delivery("billing-stream", i, "billing.usage.recorded.x")
                items.append(Usage(delivery, decode_usage_event(payload), payload))
            async with db.engine.begin() as conn:
                await conn.run_sync(apply_batch, items)

    asyncio.run(seed())


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "billing.db"
    _seed(path)
    return path


def _report(capsys: pytest.CaptureFixture[str], database: Path, *flags: str) -> str:
    code = main(["report", "--database-url", str(database), *flags], env={})
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_by_product_the_usage_is_in_each_units_own_unit(
    capsys: pytest.CaptureFixture[str], database: Path
) -> None:
    rows = list(csv.DictReader(io.StringIO(_report(capsys, database, "--format", "csv"))))
    by = {(r["product"], r["unit_type"]): r for r in rows}
    assert set(by) == {("gpt-4", "token"), ("flux-pro", "image"), ("whisper", "minute")}
    assert Decimal(by[("gpt-4", "token")]["usage"]) == 1500
    assert by[("gpt-4", "token")]["billed_events"] == "2"
    assert Decimal(by[("gpt-4", "token")]["charged"]) == Decimal("0.045")
    assert Decimal(by[("flux-pro", "image")]["usage"]) == 3
    assert Decimal(by[("flux-pro", "image")]["charged"]) == Decimal("0.12")
    whisper = by[("whisper", "minute")]
    assert (whisper["billed_events"], whisper["unpriced_events"]) == ("0", "2")
    assert Decimal(whisper["usage"]) == Decimal("3.75")
    assert Decimal(whisper["charged"]) == 0


def test_by_day_with_a_window_counts_the_usage_time_in_utc(
    capsys: pytest.CaptureFixture[str], database: Path
) -> None:
    out = _report(
        capsys, database, "--by", "day", "--since", "2026-11-02", "--until", "2026-11-03T08:30"
    )
    data = json.loads(_report(capsys, database, "--by", "day", "--format", "json"))
    assert [(r["day"], r["unit_type"]) for r in data["rows"]] == [
        ("2026-11-01", "token"),
        ("2026-11-02", "token"),
        ("2026-11-03", "image"),
        ("2026-11-03", "minute"),
    ]
    lines = out.splitlines()
    assert lines[0] == "by day, usage from 2026-11-02 until 2026-11-03T08:30:"
    body = [line.split() for line in lines[3:-2]]
    # 11-02 10:00 tokens; the image at 11-03 01:30 UTC; the minutes at 08:00 (09:00 is out).
    assert body == [
        ["2026-11-02", "token", "1", "0", "500.000000", "0.015000000"],
        ["2026-11-03", "image", "1", "0", "3.000000", "0.120000000"],
        ["2026-11-03", "minute", "0", "1", "2.500000", "0.000000000"],
    ]


def test_the_table_stays_aligned_with_wide_characters_in_ids(
    capsys: pytest.CaptureFixture[str], database: Path
) -> None:
    out = _report(capsys, database, "--by", "user")
    lines = out.splitlines()[1:]  # after the "by user:" title
    widths = {display_width(line) for line in lines if not line.startswith("TOTAL")}
    assert len(widths) == 1, lines
    assert any(line.startswith("山田太郎") for line in lines)
    assert display_width("山田太郎") == 8


def test_the_default_report_keeps_the_totals_and_adds_the_product_breakdown(
    capsys: pytest.CaptureFixture[str], database: Path
) -> None:
    out = _report(capsys, database)
    assert "balance" in out.splitlines()[0]
    assert "by product:" in out
    assert json.loads(_report(capsys, database, "--json"))["billed_events"] == 3


def test_a_bad_time_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], database: Path
) -> None:
    code = main(["report", "--database-url", str(database), "--since", "last week"], env={})
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == (
        "usage-billing: --since: 'last week' is not a date (2026-11-01) or an ISO 8601 time"
    )


def test_the_real_cli_prints_csv(database: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "billing", "report", "--by", "user", "--format", "csv"],
        env={"BILLING_DATABASE_URL": str(database), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["user"] for r in rows} == {"alice", "bob", "山田太郎"}
