"""End-to-end latency at a steady rate: a writer process, a shipper process, the stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from bench.processes import start_shipper, stop_process, tail, wait_ready
from bench.report import percentile
from bench.stream import purge, read_stream, wait_for_messages
from bench.writer import write_at_rate
from outbox import Outbox


@dataclass
class Latency:
    offered: float
    achieved: float  # events/s the writer really recorded
    groups: int  # the writer's group commits
    events: int
    missing: int  # committed events not found in the stream
    p50: float  # commit -> stored
    p99: float
    max: float
    write_p50: float  # payload timestamp (before the commit) -> stored
    write_p99: float
    shipper_exit: int


async def bench_latency(
    directory: Path,
    url: str,
    admin: Client,
    rate: float,
    seconds: float,
    poll_interval: float | None = None,
) -> Latency:
    database = directory / "latency.db"
    async with Outbox(database):
        pass  # migrate once, before two processes open the file
    await purge(admin)
    log = directory / "latency-shipper.log"
    out = directory / "latency-writer.txt"
    extra = [] if poll_interval is None else ["--poll-interval", str(poll_interval)]
    shipper = await start_shipper(database, url, log, exit_when_idle=False, extra=extra)
    try:
        await wait_ready(shipper, log)
        achieved, groups, commits = await write_at_rate(database, out, rate, seconds)
        await wait_for_messages(admin, len(commits))
    finally:
        exit_code = await stop_process(shipper)
    stored = await read_stream(admin, len(commits))
    from_commit = sorted(stored[e][0] - c for e, c in commits.items() if e in stored)
    from_write = sorted(stored[e][0] - stored[e][1] for e in commits if e in stored)
    if not from_commit:
        raise RuntimeError(f"no event reached the stream; shipper log:\n{tail(log)}")
    return Latency(
        offered=rate,
        achieved=achieved,
        groups=groups,
        events=len(commits),
        missing=len(commits) - len(from_commit),
        p50=percentile(from_commit, 0.50),
        p99=percentile(from_commit, 0.99),
        max=from_commit[-1],
        write_p50=percentile(from_write, 0.50),
        write_p99=percentile(from_write, 0.99),
        shipper_exit=exit_code,
    )
