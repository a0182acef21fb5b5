"""The shipper, in this process, draining a pre-filled outbox with ``exit_when_idle``."""

from __future__ import annotations

import asyncio
import cProfile
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from bench import cpu
from bench.stream import purge, stream_state
from bench.workload import fill_outbox, pending_rows
from outbox.sqlite import sqlite_url
from shipper.collector import tune_collector
from shipper.config import ShipperConfig
from shipper.worker import Shipper
from usage_demo.natsserver import NatsServer

perf = time.perf_counter


@dataclass
class Drain:
    events: int
    shipped_seconds: float  # run() called -> the last message stored in JetStream
    drain_seconds: float  # first -> last stored timestamp in JetStream
    startup: float  # run() called -> first message stored
    returned: float | None  # run() called -> returned; None: stopped after the grace
    grace: float  # how long run() was given to return after the last PubAck
    stored: int  # messages in the stream afterwards
    published: int  # the shipper's own count
    left: int  # rows not acknowledged in the outbox
    cpu: cpu.CpuUse | None  # run() called -> the last PubAck seen (None: not all shipped)

    @property
    def per_s(self) -> float:
        return self.events / self.shipped_seconds if self.shipped_seconds > 0 else 0.0

    @property
    def drain_per_s(self) -> float:
        return (self.events - 1) / self.drain_seconds if self.drain_seconds > 0 else 0.0

    @property
    def clean(self) -> bool:
        return self.stored == self.published == self.events and self.left == 0


def thread_role(name: str) -> str:
    """The shipper's threads by what they do (see bench.cpu)."""
    if name == "main":
        return "loop"
    if name.startswith("outbox-db"):
        return "db thread"  # outbox.transactions: the settle/claim write transactions
    return "other threads"


async def bench_shipper(
    directory: Path,
    server: NatsServer,
    admin: Client,
    events: int,
    grace: float,
    profile: Path | None,
) -> Drain:
    """The shipper in this process with ``exit_when_idle``. Its events/s run from the
    call to ``run()`` to the last message stored (start-up included). ``run()`` may go on
    after that (the idle shipper tidies the file before it exits): how long it took to
    return is reported apart, and after ``grace`` seconds it is stopped."""
    path = directory / "drain.db"
    await fill_outbox(path, events)
    await purge(admin)
    config = ShipperConfig(
        database_url=sqlite_url(path), nats_servers=(server.url,), exit_when_idle=True
    ).validate()
    # Its clean shutdown logs the connection closing at WARNING; keep the table readable.
    logging.getLogger("shipper").setLevel(logging.ERROR)
    shipper = Shipper(config)
    profiler = cProfile.Profile() if profile else None
    tune_collector()  # as the daemon does (usage-shipper run)
    wall, start = time.time(), perf()
    if profiler is not None:
        profiler.enable()
    running = asyncio.create_task(shipper.run())
    cpu_start = cpu.snapshot(thread_role, server.pid)
    cpu_end: cpu.CpuSnapshot | None = None
    delivered_at: float | None = None
    returned: float | None = None
    while not running.done():
        # A look at a counter every 10 ms: nothing the shipper's loop would notice.
        if delivered_at is None and shipper.stats.delivered >= events:
            delivered_at = perf()
            cpu_end = cpu.snapshot(thread_role, server.pid)
        if delivered_at is not None and perf() - delivered_at > grace:
            shipper.stop()
            break
        await asyncio.sleep(0.01)
    stats = await running
    if delivered_at is None or perf() - delivered_at <= grace:
        returned = perf() - start
    if profiler is not None:
        profiler.disable()
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    state = await stream_state(admin)
    return Drain(
        events=events,
        shipped_seconds=state.last_ts - wall,
        drain_seconds=state.last_ts - state.first_ts,
        startup=state.first_ts - wall,
        returned=returned,
        grace=grace,
        stored=state.messages,
        published=stats.published,
        left=pending_rows(path),
        cpu=cpu.between(cpu_start, cpu_end) if cpu_end is not None else None,
    )


def cpu_reading(use: cpu.CpuUse | None) -> str:
    """Which resource ran out first, as far as CPU counters can tell. The shipper's
    threads share one GIL: the loop and the db thread together can keep one core busy at
    the most (a little more while SQLite runs with the GIL released)."""
    if use is None:
        return "not measured: the drain did not finish"
    shipper = sum(use.threads.values())
    if shipper >= 0.85:
        return (
            f"the shipper's threads kept {shipper:.2f} of a core busy (one GIL): its Python "
            "sets the pace"
        )
    if use.machine >= 0.9 * use.cores:
        return f"every core was busy ({use.machine:.2f} of {use.cores}): no CPU to spare"
    return f"the shipper's threads used {shipper:.2f} of a core: it waited for acks or the disk"
