"""Writers in several processes on one outbox file, no shipper: the three ways to write.

    .venv/bin/python -m bench.session_writers                 # 4 processes, 150 events/s each
    .venv/bin/python -m bench.session_writers --processes 2

Each writer process starts a call at a fixed rate, each call a task of its own started
at its instant whether or not the calls before it have returned (as request handlers
would), and records how long the call took to commit. The three ways, one after the
other on a fresh file each:

* ``session``: ``record_usage`` in the caller's own ``AsyncSession`` transaction on
  ``create_outbox_engine`` (the README's first example). A writer that finds SQLite's
  lock taken waits in its busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between looks.
* ``session, pool 1``: the same on an engine with one connection (``pool_size=1,
  max_overflow=0``): the process's calls queue for it in SQLAlchemy's pool, and only
  the other processes' writers meet SQLite's lock taken.
* ``session+lock``: the same transaction as ``session`` inside
  ``WriteLock(path).held_async()`` (one instance per process, shared by its calls): the
  process's calls queue on the instance, the processes in the kernel.
* ``Outbox``: ``await Outbox.record(...)`` (group commit, takes the lock itself): the
  reference, as the README recommends where commit latency matters.

Printed: p50 / p99 / max call latency per way, each beside ``Outbox``'s in the same run,
and how many calls finished (a way that cannot keep up shows it there).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.workload import event_args
from outbox import Outbox, create_outbox_engine, record_usage
from outbox.migrate import upgrade_engine
from outbox.writelock import WriteLock

WAYS = ("session", "session, pool 1", "session+lock", "Outbox")


async def _write(way: str, path: Path, rate: float, seconds: float, start_at: float) -> list[float]:
    count = round(rate * seconds)
    latencies: list[float] = []
    pool: dict[str, Any] = {"pool_size": 1, "max_overflow": 0} if way.endswith("pool 1") else {}
    engine = create_outbox_engine(f"sqlite+aiosqlite:///{path}", **pool)
    sessions = async_sessionmaker(engine)
    lock = WriteLock(str(path))  # one for the process: its tasks queue on it in turn

    def guard() -> AbstractAsyncContextManager[None]:
        return lock.held_async() if way == "session+lock" else nullcontext()

    async def in_session(i: int) -> None:
        started = time.monotonic()
        async with guard(), sessions() as session, session.begin():
            await record_usage(session, **event_args(i))
        latencies.append(time.monotonic() - started)

    async def through_outbox(outbox: Outbox, i: int) -> None:
        started = time.monotonic()
        await outbox.record(**event_args(i))
        latencies.append(time.monotonic() - started)

    opened: AbstractAsyncContextManager[Outbox | None]
    opened = Outbox(path) if way == "Outbox" else nullcontext()
    try:
        async with opened as outbox:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            tasks: list[asyncio.Task[None]] = []
            begin = time.monotonic()
            for i in range(count):
                delay = begin + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                call = through_outbox(outbox, i) if outbox is not None else in_session(i)
                tasks.append(asyncio.create_task(call))
            await asyncio.gather(*tasks)
    finally:
        lock.close()
        await engine.dispose()
    return latencies


def _process(way: str, path: str, rate: float, seconds: float, start_at: float, out: Any) -> None:
    out.send(asyncio.run(_write(way, Path(path), rate, seconds, start_at)))


async def _migrate(path: Path) -> None:
    engine = create_outbox_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()


def run_way(way: str, root: Path, processes: int, rate: float, seconds: float) -> list[float]:
    """Every call's latency, from ``processes`` writer processes writing the ``way``."""
    path = root / f"way-{WAYS.index(way)}.db"
    asyncio.run(_migrate(path))
    spawn = multiprocessing.get_context("spawn")
    start_at = time.monotonic() + 2.0  # all start together, after their imports
    pipes, workers = [], []
    for _ in range(processes):
        receive, send = spawn.Pipe(duplex=False)
        arguments = (way, str(path), rate, seconds, start_at, send)
        worker = spawn.Process(target=_process, args=arguments)
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    latencies: list[float] = []
    for receive in pipes:
        latencies += receive.recv()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"a {way} writer exited {worker.exitcode}")
    return latencies


def _ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rate", type=float, default=150.0, help="calls/s per process")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="session-writers-") as tmp:
        for way in WAYS:
            results[way] = sorted(run_way(way, Path(tmp), args.processes, args.rate, args.seconds))
    expected = args.processes * round(args.rate * args.seconds)
    reference = results["Outbox"]
    print(
        f"\n{args.processes} writer processes x {args.rate:,.0f} calls/s, {args.seconds:g} s,"
        " no shipper (latency: call start -> committed)"
    )
    print(f"{'way':16} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  beside Outbox")
    for way, latencies in results.items():
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        ref_p99 = reference[min(len(reference) - 1, int(len(reference) * 0.99))]
        beside = "reference" if way == "Outbox" else f"p99 {p99 / ref_p99:.1f}x"
        print(
            f"{way:16} {len(latencies):>7} {_ms(p50):>8} {_ms(p99):>8} {_ms(latencies[-1]):>8}"
            f"  {beside}{'' if len(latencies) == expected else ' (calls missing)'}"
        )


if __name__ == "__main__":
    main()
