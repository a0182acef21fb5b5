"""Retention benchmark: a large backlog drains, the file shrinks, a writer keeps writing.

    .venv/bin/python -m bench.retention            # 1,000,000 events
    .venv/bin/python -m bench.retention --quick    # 100,000 events, three times, pooled

A writer process commits one outbox row every ~10 ms (raw ``sqlite3``, the outbox's own
pragmas, rows from the write API's ``build_usage_event``) from start to end and records
each commit's latency (taking the outbox's write lock, :mod:`outbox.writelock`, as
``Outbox`` and every write through ``outbox.transactions`` do, then ``BEGIN IMMEDIATE``
.. ``COMMIT``; ``--no-lock``: SQLite's busy handler alone, as a service's own engine
gets) against the system monotonic clock. Phases, told apart by the time they started
(same clock in both processes):

* baseline: the writer alone (no shipper), a few seconds;
* drain: a shipper (in this process, default settings) drains the backlog;
* shrink: from the backlog's last row shipped until the file stopped shrinking
  (incremental vacuum in 256-page steps, then a WAL checkpoint).

Printed: file sizes (db + wal) before and after, the time the shrink took, and the writer's
p50/p99/max commit latency per phase. Goals (issue 15), PASS/MISS printed: while the
backlog drains, writer p99 <= max(5 ms, 2x the baseline p99) and max <= 25 ms; the same
is shown for the cleanup phase. With ``--drains N`` (``--quick``: 3) the backlog is filled
and drained N times, each run's table printed, and the verdict given again over all the
runs' commits pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from outbox import Outbox, store
from outbox.contract import build_usage_event
from outbox.sqlite import sqlite_url
from outbox.writelock import WriteLock
from shipper.collector import tune_collector
from shipper.config import ShipperConfig
from shipper.worker import Shipper
from usage_demo.natsserver import NatsServer
from usage_demo.traffic import usage_args

WRITE_EVERY = 0.010


def _size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _writer(path: str, stop: Any, out: Any, locked: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")
    # As the write API's writers do (outbox/service.py): checkpoints run beside the commit
    # path, not inside a writer's commit.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    lock = WriteLock(path) if locked else None
    samples: list[tuple[float, float]] = []
    parts: list[tuple[float, float, float]] = []
    columns = ("event_id", "subject", "headers", "payload", "created_at")
    sql = f"INSERT INTO usage_outbox ({', '.join(columns)}) VALUES (?, ?, ?, ?, ?)"
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        (row,) = store.event_rows([build_usage_event(**usage_args(i))])
        started = time.monotonic()
        with lock.held() if lock is not None else contextlib.nullcontext():
            locked_at = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            began_at = time.monotonic()
            conn.execute(sql, [row[c] for c in columns])
            conn.execute("COMMIT")
        done = time.monotonic()
        samples.append((started, done - started))
        # Where a slow commit's time went: the lock file, SQLite's lock, the commit.
        parts.append((locked_at - started, began_at - locked_at, done - began_at))
        i += 1
        next_at += WRITE_EVERY
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()
    out.send((samples, parts))


def _freelist(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _pending(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT count(*) FROM usage_outbox WHERE state='pending'").fetchone()[0]
        )


async def _fill(path: Path, events: int) -> None:
    async with Outbox(path) as outbox:
        for start in range(0, events, 10_000):
            await outbox.record_many(
                usage_args(i) for i in range(start, min(events, start + 10_000))
            )


def _stats(latencies: list[float]) -> tuple[str, str, str, int]:
    if not latencies:
        return ("-", "-", "-", 0)
    ordered = sorted(latencies)
    p99 = _p99(ordered)
    return (
        f"{statistics.median(ordered) * 1000:.2f}",
        f"{p99 * 1000:.2f}",
        f"{ordered[-1] * 1000:.2f}",
        len(ordered),
    )


async def main_async(
    events: int, baseline_seconds: float, vacuum_pages: int | None, locked: bool = True
) -> Phases:
    """One backlog of ``events`` filled, drained and shrunk; its table printed; the
    writer's commit latencies of each phase returned."""
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        work = Path(tmp)
        path = work / "outbox.db"
        server = NatsServer(work / "nats").start()
        try:
            await _fill(path, 10)
            empty_seed = _size(path)
            t = time.monotonic()
            await _fill(path, events)
            print(f"filled {events:,} events in {time.monotonic() - t:.1f} s")
            before = _size(path)

            stop = multiprocessing.Event()
            receive, send = multiprocessing.Pipe(duplex=False)
            writer = multiprocessing.Process(target=_writer, args=(str(path), stop, send, locked))
            writer.start()
            baseline_from = time.monotonic()
            await asyncio.sleep(baseline_seconds)
            drain_from = time.monotonic()
            config = ShipperConfig(
                database_url=sqlite_url(path), nats_servers=(server.url,), vacuum_pages=vacuum_pages
            ).validate()
            shipper = Shipper(config)
            tune_collector()  # as the daemon does (usage-shipper run)
            task = asyncio.create_task(shipper.run())
            while _pending(path) > 50:  # noqa: ASYNC110 - polls another process
                await asyncio.sleep(0.05)
            shrink_from = time.monotonic()
            size_at_drained = _size(path)
            last, steady = (_size(path), shipper.stats.vacuumed_pages), 0
            while steady < 10:  # neither the file nor the vacuum count moved for 1 s
                await asyncio.sleep(0.1)
                now = (_size(path), shipper.stats.vacuumed_pages)
                steady = steady + 1 if now == last else 0
                last = now
            shrink_to = time.monotonic() - 1.0
            after = _size(path)
            free_left = _freelist(path)
            shipper.stop()
            await task
            stop.set()
            samples, parts = receive.recv()
            writer.join()
        finally:
            server.stop()

    def phase(start: float, end: float) -> list[float]:
        return [lat for at, lat in samples if start <= at < end]

    mib = 1024 * 1024
    print()
    print(f"events                     {events:,}")
    print(f"empty file (db+wal)        {empty_seed / mib:8.1f} MiB")
    print(f"before drain (db+wal)      {before / mib:8.1f} MiB")
    print(f"backlog drained (db+wal)   {size_at_drained / mib:8.1f} MiB")
    print(f"after shrink (db+wal)      {after / mib:8.1f} MiB  (free pages left {free_left})")
    print(f"drain took                 {shrink_from - drain_from:8.1f} s")
    print(f"shrink took                {shrink_to - shrink_from:8.1f} s")
    step = config.vacuum_step
    print(f"pages vacuumed             {shipper.stats.vacuumed_pages:,} ({step} per step)")
    print()
    print(
        f"{'writer phase':26} {'commits':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'>10 ms':>7}"
    )
    phases = {
        "baseline (no shipper)": phase(baseline_from, drain_from),
        "during drain": phase(drain_from, shrink_from),
        "during cleanup/vacuum": phase(shrink_from, shrink_to),
    }
    for name, rows in phases.items():
        p50_text, p99_text, max_text, count = _stats(rows)
        slow = sum(1 for latency in rows if latency > 0.010)
        print(f"{name:26} {count:>8} {p50_text:>8} {p99_text:>8} {max_text:>8} {slow:>7}")
    slowest = sorted(
        (
            (lat, at, part)
            for (at, lat), part in zip(samples, parts, strict=True)
            if drain_from <= at < shrink_to
        ),
        reverse=True,
    )[:5]
    print("slowest commits after the shipper started (ms: lock file + SQLite lock + commit):")
    for lat, at, (file_lock, sqlite_lock, commit) in slowest:
        print(
            f"  {lat * 1000:7.1f} at {at - drain_from:6.2f} s: {file_lock * 1000:.1f} + "
            f"{sqlite_lock * 1000:.1f} + {commit * 1000:.1f}"
        )
    print()
    print(f"writer {'with' if locked else 'WITHOUT'} the outbox write lock (outbox.writelock)")
    _verdicts(phases)
    return phases


Phases = dict[str, list[float]]


def _verdicts(phases: Phases) -> None:
    """The goal's PASS/MISS for the drain (and, for information, the cleanup)."""
    baseline = sorted(phases["baseline (no shipper)"])
    bound = max(0.005, 2 * _p99(baseline)) if baseline else 0.005
    for name in ("during drain", "during cleanup/vacuum"):
        rows = sorted(phases[name])
        if not rows:
            print(f"{name:26} no commits measured: MISS")
            continue
        p99, top = _p99(rows), rows[-1]
        goal = "goal" if name == "during drain" else "info"
        verdict = "PASS" if p99 <= bound and top <= 0.025 else "MISS"
        print(
            f"{name:26} p99 {p99 * 1000:.2f} ms <= {bound * 1000:.2f} ms (max(5 ms, 2x "
            f"baseline p99)) and max {top * 1000:.2f} ms <= 25 ms: "
            f"{verdict if goal == 'goal' else verdict.lower() + ' (info)'}"
        )


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 events")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument(
        "--vacuum-pages", type=int, default=None, help="pages per step (default: the shipper's)"
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="the writer skips the outbox write lock (SQLite's busy handler alone)",
    )
    parser.add_argument(
        "--drains",
        type=int,
        default=None,
        help="backlogs drained one after another, the writer's commits of all pooled for "
        "the verdict (default 3 with --quick, else 1)",
    )
    args = parser.parse_args()
    events = 100_000 if args.quick else args.events
    drains = args.drains or (3 if args.quick else 1)
    pooled: Phases = {}
    for run in range(drains):
        if drains > 1:
            print(f"\n== drain {run + 1} of {drains}")
        phases = asyncio.run(
            main_async(events, args.baseline_seconds, args.vacuum_pages, locked=not args.no_lock)
        )
        for name, latencies in phases.items():
            pooled.setdefault(name, []).extend(latencies)
    if drains > 1:
        # A 100,000-event drain now takes about 2 s: ~200 commits, whose "p99" is the
        # second-slowest commit. Pooling the drains gives the p99 a few samples above it
        # (and the max more chances to be bad).
        counts = ", ".join(f"{len(v):,} {k}" for k, v in pooled.items())
        print(f"\n== pooled over {drains} drains ({counts} commits)")
        _verdicts(pooled)


if __name__ == "__main__":
    main()
