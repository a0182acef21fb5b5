"""Memory of a shipper process draining a backlog: VmRSS sampled from /proc."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from bench.processes import READY_LINE, log_has, start_shipper, stop_process, tail, vm_rss_kib
from bench.stream import purge, stream_state
from bench.workload import fill_outbox, pending_rows

perf = time.perf_counter


@dataclass
class Memory:
    backlog: int
    ready_kib: int  # once connected and the stream checked
    peak_kib: int  # over the whole run, tidying after the drain included
    end_kib: int  # the last sample before it exited
    seconds: float  # process start -> last message stored
    drain_per_s: float  # first -> last stored
    stored: int
    left: int
    exit_code: int
    exited_after: float | None  # seconds past the last PubAck; None: stopped after grace
    grace: float

    @property
    def clean(self) -> bool:
        return self.stored == self.backlog and self.left == 0 and self.exit_code == 0


async def bench_memory(
    directory: Path, url: str, admin: Client, backlog: int, grace: float
) -> Memory:
    database = directory / "backlog.db"
    await fill_outbox(database, backlog)
    await purge(admin)
    log = directory / "memory-shipper.log"
    wall, start = time.time(), perf()
    process = await start_shipper(database, url, log, exit_when_idle=True)
    samples: list[int] = []
    ready: int | None = None
    delivered_at: float | None = None
    stopped = False
    while process.returncode is None:
        rss = vm_rss_kib(process.pid)
        if rss is not None:
            samples.append(rss)
            if ready is None and log_has(log, READY_LINE):
                ready = len(samples) - 1
        checking = delivered_at is None and len(samples) % 10 == 0
        if checking and (await stream_state(admin)).messages >= backlog:
            delivered_at = perf()
        if delivered_at is not None and perf() - delivered_at > grace:
            # Drained, but not exiting (tidying the file): SIGTERM, a clean stop.
            stopped = True
            await stop_process(process)
            break
        await asyncio.sleep(0.05)
    await process.wait_async()
    exited = perf()
    if not samples or ready is None:
        raise RuntimeError(f"the shipper never got ready; its log {log}:\n{tail(log)}")
    state = await stream_state(admin)
    shipped = state.last_ts - wall
    return Memory(
        backlog=backlog,
        ready_kib=samples[ready],
        peak_kib=max(samples),
        end_kib=samples[-1],
        seconds=shipped,
        drain_per_s=(state.messages - 1) / max(state.last_ts - state.first_ts, 1e-9),
        stored=state.messages,
        left=pending_rows(database),
        exit_code=process.returncode if process.returncode is not None else -1,
        exited_after=None if stopped else exited - start - shipped,
        grace=grace,
    )
