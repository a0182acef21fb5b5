"""Write-path benchmark: each measurement beside its floor, measured in the same run.

    .venv/bin/python -m bench.write_path            # default sizes, well under a minute
    .venv/bin/python -m bench.write_path --quick    # a smoke run of a few seconds

Rows:

1. ``record_usage`` inside an already open ``AsyncSession`` transaction: p50/p99 of the
   call alone, beside a plain SQLAlchemy Core insert of the same kind of row on the same
   session's connection (the row built beforehand, so only the insert is timed).
   Goal: p50 at most 1.2x the plain insert, p99 under 1 ms.
2. The batch form (``record_usages`` on an ``AsyncConnection``, one transaction per
   batch, commit included), events/s, beside raw ``sqlite3`` ``executemany`` of the same
   rows with the same pragmas, each run ``--repeat`` times (3), interleaved, the best
   kept (the box's speed flips within seconds, :mod:`bench.speed`). Goal: >= 50,000
   events/s.
3. The ``Outbox`` object with 64 concurrent callers, events/s and p99 latency of a call,
   beside its floor: ``record_usages`` of groups of the same size from one caller (the
   same inserts and commits with no queue or wake-ups). Goal: >= 10,000 events/s and
   p99 <= 10 ms.

Every run uses fresh SQLite files in a temporary directory, WAL, ``synchronous=NORMAL``.
Absolute numbers move +-30% between runs on a small machine; the ratios hold better.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.report import add_repeat_argument, repeat_count
from outbox import Outbox, build_usage_event, outbox_table, record_usage, record_usages
from outbox.migrate import upgrade
from outbox.sqlite import create_outbox_engine, sqlite_url
from outbox.store import event_rows

EVENT: dict[str, Any] = {
    "user_id": "user-000123",
    "product_id": "claude-3.5-sonnet",
    "provider": "anthropic",
    "operation": "chat",
    "service_type": "text",
    "input_tokens": 1234,
    "output_tokens": 567,
    "metadata": {"request_id": "req-7f3a9c", "region": "eu-west-1", "latency_ms": 812.5},
}
PLAIN_INSERT = outbox_table.insert()


@dataclass
class Row:
    case: str
    measured: str
    floor: str
    ratio: float  # measured cost / floor cost (>1 means slower than the floor)
    goal: str
    passed: bool


def percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def per_s(rate: float) -> str:
    return f"{rate:,.0f}/s"


async def fresh_engine(directory: Path, name: str) -> tuple[AsyncEngine, Path]:
    path = directory / f"{name}.db"
    engine = create_outbox_engine(sqlite_url(path))
    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
    return engine, path


def built_rows(count: int) -> list[dict[str, Any]]:
    return event_rows(build_usage_event(**EVENT) for _ in range(count))


# -- 1. record_usage vs a plain Core insert, inside an open AsyncSession transaction ------


async def bench_single(directory: Path, calls: int, per_txn: int) -> Row:
    engine, _ = await fresh_engine(directory, "single")
    ours: list[float] = []
    plain: list[float] = []
    perf = time.perf_counter
    try:
        async with AsyncSession(engine) as session:
            for warm in (True, False):
                rounds = max(1, (min(calls, 500) if warm else calls) // per_txn)
                for _ in range(rounds):
                    rows = built_rows(per_txn)
                    async with session.begin():
                        conn = await session.connection()
                        # Alternate the two calls in one transaction, so drift (the WAL
                        # growing, other load on the machine) hits both sides alike.
                        for row in rows:
                            start = perf()
                            await record_usage(session, **EVENT)
                            middle = perf()
                            await conn.execute(PLAIN_INSERT, row)
                            end = perf()
                            if not warm:
                                ours.append(middle - start)
                                plain.append(end - middle)
    finally:
        await engine.dispose()
    ours.sort()
    plain.sort()
    p50, p99 = percentile(ours, 0.50), percentile(ours, 0.99)
    f50, f99 = percentile(plain, 0.50), percentile(plain, 0.99)
    ratio = p50 / f50
    return Row(
        case=f"record_usage in open AsyncSession txn ({len(ours):,} calls, {per_txn}/txn)",
        measured=f"p50 {ms(p50)} p99 {ms(p99)}",
        floor=f"Core insert p50 {ms(f50)} p99 {ms(f99)}",
        ratio=ratio,
        goal="p50 <= 1.2x floor, p99 < 1 ms",
        passed=ratio <= 1.2 and p99 < 0.001,
    )


# -- 2. batch form vs raw sqlite3 executemany --------------------------------------------


def raw_executemany(path: Path, batches: list[list[dict[str, Any]]]) -> float:
    columns = ("event_id", "subject", "headers", "payload", "created_at")
    sql = f"INSERT INTO usage_outbox ({', '.join(columns)}) VALUES ({', '.join('?' * 5)})"
    tuples = [[tuple(r[c] for c in columns) for r in batch] for batch in batches]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        start = time.perf_counter()
        for rows in tuples:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        return time.perf_counter() - start


async def bench_batch(directory: Path, events: int, batch: int, repeat: int = 1) -> Row:
    """``repeat`` runs of ours and of the floor, interleaved; the best of each is kept (the
    box's speed flips within seconds, see bench.speed)."""
    batches = max(1, events // batch)
    ours, floor = float("inf"), float("inf")
    for attempt in range(repeat):
        engine, _ = await fresh_engine(directory, f"batch-{attempt}")
        try:
            async with engine.begin() as conn:  # warm-up: caches, compiled statement
                await record_usages(conn, [EVENT] * batch)
            gc.collect()
            start = time.perf_counter()
            for _ in range(batches):
                async with engine.begin() as conn:
                    await record_usages(conn, [EVENT] * batch)
            ours = min(ours, time.perf_counter() - start)
        finally:
            await engine.dispose()
        raw_engine, raw_path = await fresh_engine(directory, f"batch-raw-{attempt}")
        await raw_engine.dispose()
        rows = [built_rows(batch) for _ in range(batches)]
        gc.collect()
        floor = min(floor, raw_executemany(raw_path, rows))
    total = batches * batch
    rate, floor_rate = total / ours, total / floor
    best = f", best of {repeat}" if repeat > 1 else ""
    return Row(
        case=f"record_usages, {batch:,}/txn ({total:,} events{best})",
        measured=per_s(rate),
        floor=f"raw sqlite3 executemany {per_s(floor_rate)}",
        ratio=floor_rate / rate,
        goal=">= 50,000/s",
        passed=rate >= 50_000,
    )


# -- 3. the Outbox object with concurrent callers ----------------------------------------


async def bench_outbox(directory: Path, events: int, callers: int) -> Row:
    per_caller = max(1, events // callers)
    latencies: list[float] = []
    perf = time.perf_counter

    async def caller(outbox: Outbox, count: int, record: bool) -> None:
        for _ in range(count):
            start = perf()
            await outbox.record(**EVENT)
            if record:
                latencies.append(perf() - start)

    async with Outbox(directory / "outbox.db") as outbox:
        await asyncio.gather(*(caller(outbox, 20, False) for _ in range(callers)))
        commits_before = outbox.commits
        gc.collect()
        start = perf()
        await asyncio.gather(*(caller(outbox, per_caller, True) for _ in range(callers)))
        elapsed = perf() - start
        commits = outbox.commits - commits_before

    # Floor: the same group size written by one caller, no queue and no wake-ups.
    engine, _ = await fresh_engine(directory, "outbox-floor")
    total = per_caller * callers
    group = max(1, round(total / max(commits, 1)))
    try:
        gc.collect()
        floor_start = perf()
        for _ in range(max(1, total // group)):
            async with engine.begin() as conn:
                await record_usages(conn, [EVENT] * group)
        floor = perf() - floor_start
    finally:
        await engine.dispose()

    latencies.sort()
    rate = total / elapsed
    floor_rate = (max(1, total // group) * group) / floor
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return Row(
        case=f"Outbox, {callers} callers ({total:,} events, {commits:,} commits)",
        measured=f"{per_s(rate)} p50 {ms(p50)} p99 {ms(p99)}",
        floor=f"record_usages x{group}/txn {per_s(floor_rate)}",
        ratio=floor_rate / rate,
        goal=">= 10,000/s, p99 <= 10 ms",
        passed=rate >= 10_000 and p99 <= 0.010,
    )


# -- the table ---------------------------------------------------------------------------


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    headers = ("case", "measured", "floor (same run)", "ratio", "goal", "result")
    cells = [
        (r.case, r.measured, r.floor, f"{r.ratio:.2f}x", r.goal, "PASS" if r.passed else "MISS")
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out(line)
    out("-+-".join("-" * w for w in widths))
    for c in cells:
        out(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    out("ratio = our cost / the floor's cost (1.00x means no overhead over the floor)")


async def run(args: argparse.Namespace) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="usage-outbox-bench-") as tmp:
        directory = Path(tmp)
        rows = [await bench_single(directory, args.single, args.per_txn)]
        rows.append(await bench_batch(directory, args.batch_events, args.batch_size, args.repeat))
        rows.append(await bench_outbox(directory, args.outbox_events, args.callers))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=10_000, help="record_usage calls timed")
    parser.add_argument("--per-txn", type=int, default=100, help="calls per open transaction")
    parser.add_argument("--batch-events", type=int, default=100_000, help="batch-form events")
    parser.add_argument("--batch-size", type=int, default=1_000, help="events per batch")
    parser.add_argument("--outbox-events", type=int, default=50_000, help="Outbox events")
    parser.add_argument("--callers", type=int, default=64, help="concurrent Outbox callers")
    add_repeat_argument(parser, "the batch form and its floor")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.single, args.batch_events, args.outbox_events = 2_000, 20_000, 10_000
    args.repeat = repeat_count(parser, args)
    print(
        f"usage-outbox write path, Python {sys.version.split()[0]}, SQLite "
        f"{sqlite3.sqlite_version}, sizes: single={args.single:,} batch={args.batch_events:,} "
        f"outbox={args.outbox_events:,} callers={args.callers}"
    )
    started = time.perf_counter()
    rows = asyncio.run(run(args))
    print_table(rows)
    print(f"total {time.perf_counter() - started:.1f} s")
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
