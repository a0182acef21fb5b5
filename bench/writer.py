"""The writer process of the latency rows: ``Outbox.record`` on a fixed schedule.

    python -m bench.writer OUTBOX OUT --rate 1000 --seconds 10

Run in a process of its own (:func:`write_at_rate`), so the writer's event loop is not the
one measuring; it writes ``event_id commit_ns`` per event to ``OUT`` for the caller to
set beside the stream's or billing's timestamps. ``bench.shipper`` and ``bench.billing``
both start it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.processes import ROOT
from bench.workload import event_args
from outbox import Outbox

perf = time.perf_counter

#: What the writer reports: its achieved rate, its group commits, event_id -> commit time.
Commits = tuple[float, int, dict[str, float]]


async def writer_main(database: Path, rate: float, seconds: float, out: Path) -> None:
    """The writer process of the latency row: ``Outbox.record`` on a fixed schedule.

    Each call runs as its own task, started at its scheduled instant whether or not the
    calls before it have returned (as concurrent request handlers would); the group commit
    batches whatever is queued. Writes ``event_id commit_ns`` per event."""
    count = round(rate * seconds)
    commits: list[tuple[str, int]] = []

    async def one(outbox: Outbox, i: int) -> None:
        event_id = await outbox.record(**event_args(i))
        commits.append((event_id, time.time_ns()))

    async with Outbox(database) as outbox:
        tasks: list[asyncio.Task[None]] = []
        start = perf()
        for i in range(count):
            delay = start + i / rate - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(outbox, i)))
        await asyncio.gather(*tasks)
        elapsed = perf() - start
        groups = outbox.commits
    write_commits(out, count, elapsed, groups, commits)


def write_commits(
    out: Path, count: int, elapsed: float, groups: int, commits: list[tuple[str, int]]
) -> None:
    lines = [json.dumps({"events": count, "seconds": elapsed, "commits": groups})]
    lines += [f"{event_id} {ns}" for event_id, ns in commits]
    out.write_text("\n".join(lines) + "\n")


def read_commits(out: Path) -> Commits:
    """The writer's achieved rate, its group commits, and event_id -> commit time."""
    summary, *lines = out.read_text().splitlines()
    written = json.loads(summary)
    commits = {eid: int(ns) / 1e9 for eid, ns in (line.split() for line in lines)}
    return written["events"] / written["seconds"], written["commits"], commits


async def write_at_rate(database: Path, out: Path, rate: float, seconds: float) -> Commits:
    """Run the writer process to its end and read what it committed, when."""
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.writer",
        str(database),
        str(out),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        cwd=ROOT,
    )
    if await writer.wait() != 0:
        raise RuntimeError("the latency writer failed")
    return read_commits(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("database", type=Path, help="the outbox (migrated already)")
    parser.add_argument("out", type=Path, help="where the commit times go")
    parser.add_argument("--rate", type=float, required=True, help="events/s")
    parser.add_argument("--seconds", type=float, required=True, help="how long to write")
    args = parser.parse_args(argv)
    asyncio.run(writer_main(args.database, args.rate, args.seconds, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
