"""Writer processes of the fault scenarios (``python -m bench.faults.writer``).

Each records events through the outbox's own write API: :class:`outbox.Outbox` (group
commit) or :func:`outbox.record_usage` inside a session transaction that also inserts a
business row. Each committed event is appended to the writer's
:class:`~bench.faults.audit.WrittenLog`; each failed call is counted, never retried, so an
error reaching a writer is visible in :class:`WriterResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.faults.audit import WrittenLog
from bench.faults.procs import Proc
from bench.faults.traffic import usage_call, written_record


@dataclass(frozen=True)
class WriterSpec:
    """How a writer process writes. ``api``: ``outbox`` (an :class:`outbox.Outbox`, group
    commit) or ``session`` (``record_usage`` plus a business row, one transaction per
    event, on an engine from :func:`outbox.create_outbox_engine`). ``rate``: events/s per
    process (0 = as fast as it can). ``concurrency``: concurrent callers in the process."""

    events: int
    api: str = "outbox"
    rate: float = 0.0
    concurrency: int = 8
    seed: int = 0


@dataclass
class WriterResult:
    writer: int
    api: str
    written: int
    errors: int
    locked_errors: int
    first_errors: list[str]
    started_at: float
    finished_at: float
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (wall time, seconds)


@dataclass
class Writers:
    """Writer processes started together; :meth:`wait` collects their results."""

    procs: list[Proc]
    result_paths: list[Path]

    @property
    def running(self) -> bool:
        return any(p.running for p in self.procs)

    def wait(self, timeout: float) -> list[WriterResult]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"{proc.name} still writing after {timeout:.0f} s") from exc
            if code != 0:
                raise AssertionError(f"{proc.name} exited {code}:\n{proc.log_text()[-3000:]}")
        return [
            WriterResult(**{**data, "latencies": [tuple(x) for x in data["latencies"]]})
            for data in (json.loads(p.read_text()) for p in self.result_paths)
        ]

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()


async def _write(spec: WriterSpec, outbox: Path, log: WrittenLog, writer: int) -> WriterResult:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from outbox import Outbox, create_outbox_engine, migrate, record_usage

    rng = random.Random(spec.seed * 7919 + 17)
    calls = [usage_call(rng, writer, i) for i in range(spec.events)]
    next_index = itertools.count()
    errors: list[str] = []
    latencies: list[tuple[float, float]] = []
    written = 0
    started = time.time()
    origin = time.monotonic()
    business = sa.table(
        "inference_requests",
        sa.column("user_id", sa.String),
        sa.column("model", sa.String),
        sa.column("event_id", sa.String),
    )

    async def pace(index: int) -> None:
        if spec.rate > 0:
            due = origin + index / spec.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the traffic's schedule, not synchronisation

    async def run(record: Callable[[dict[str, Any]], Any]) -> None:
        nonlocal written
        while (index := next(next_index)) < spec.events:
            await pace(index)
            call = calls[index]
            began = time.perf_counter()
            try:
                event_id = await record(call)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append((time.time(), time.perf_counter() - began))
            log.add(written_record(event_id, call))
            written += 1

    if spec.api == "outbox":
        async with Outbox(outbox) as box:

            async def via_outbox(call: dict[str, Any]) -> str:
                return await box.record(**call)

            await asyncio.gather(*(run(via_outbox) for _ in range(spec.concurrency)))
    elif spec.api == "session":
        engine = create_outbox_engine(f"sqlite+aiosqlite:///{outbox}")
        try:
            await migrate.upgrade_engine(engine)
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "CREATE TABLE IF NOT EXISTS inference_requests (id INTEGER PRIMARY KEY, "
                    "user_id TEXT NOT NULL, model TEXT NOT NULL, event_id TEXT NOT NULL)"
                )
            sessions = async_sessionmaker(engine, expire_on_commit=False)

            async def via_session(call: dict[str, Any]) -> str:
                async with sessions() as session, session.begin():
                    event_id = await record_usage(session, **call)
                    await session.execute(
                        sa.insert(business).values(
                            user_id=call["user_id"], model=call["product_id"], event_id=event_id
                        )
                    )
                return event_id

            await asyncio.gather(*(run(via_session) for _ in range(spec.concurrency)))
        finally:
            await engine.dispose()
    else:
        raise SystemExit(f"unknown api {spec.api!r}")
    return WriterResult(
        writer=writer,
        api=spec.api,
        written=written,
        errors=len(errors),
        locked_errors=sum("database is locked" in e for e in errors),
        first_errors=errors[:20],
        started_at=started,
        finished_at=time.time(),
        latencies=latencies,
    )


def writer_main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.faults.writer``: write, log each commit, report (JSON)."""
    parser = argparse.ArgumentParser(prog="bench.faults.writer")
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--written", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--writer", type=int, required=True)
    parser.add_argument("--spec", required=True, help="WriterSpec as JSON")
    args = parser.parse_args(argv)
    spec = WriterSpec(**json.loads(args.spec))
    log = WrittenLog(args.written)
    try:
        result = asyncio.run(_write(spec, args.outbox, log, args.writer))
    finally:
        log.close()
    args.result.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(writer_main())
