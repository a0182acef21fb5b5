"""Several writer processes and a draining process on one SQLite outbox file.

4 writer processes x 2,000 events: two through the ``Outbox`` object (group commit), two
through ``record_usage`` in their own short transactions on their own engine, several at
once. Meanwhile another process runs the real shipper (its claim, record and settle
transactions, exactly as in production) with the in-memory link in place of JetStream,
and, once the writers are done, a burst run drains the rest. At the end every event id
was published exactly once and deleted, none is left, and no writer saw an error of any
kind, ``database is locked`` included.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import time
import traceback
from contextlib import closing
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from outbox import Outbox, record_usage
from outbox.sqlite import create_outbox_engine, sqlite_url
from shipper import Shipper, ShipperConfig
from shipper.testing import InMemoryLink
from usage_demo.waiting import wait_until

WRITERS = 4
PER_WRITER = 2_000
TASKS_PER_WRITER = 8
DEADLINE = 120.0  # seconds; the whole test takes a few


def event_args(writer: int, index: int) -> dict[str, Any]:
    return {
        "user_id": f"user-{writer}-{index % 13}",
        "product_id": ("gpt-4.1", "claude-3.5-sonnet", "text-embedding-3-small")[index % 3],
        "provider": "openai",
        "operation": "chat",
        "service_type": "text",
        "input_tokens": index,
        "output_tokens": writer,
        "metadata": {"writer": writer, "index": index},
    }


# -- child processes (top-level functions: spawn imports this module in each child) ----


def writer_process(path: str, writer: int, mode: str, start: Event, result: str) -> None:
    ids: list[str] = []
    errors: list[str] = []
    try:
        if not start.wait(DEADLINE):
            raise TimeoutError("never told to start")
        asyncio.run(_write(path, writer, mode, ids, errors))
    except BaseException as exc:
        errors.append("".join(traceback.format_exception(exc)))
    Path(result).write_text(json.dumps({"ids": ids, "errors": errors}))


async def _write(path: str, writer: int, mode: str, ids: list[str], errors: list[str]) -> None:
    indexes = iter(range(PER_WRITER))

    async def through_outbox(outbox: Outbox) -> None:
        for index in indexes:
            try:
                ids.append(await outbox.record(**event_args(writer, index)))
            except Exception as exc:  # every error reaching a writer is recorded
                errors.append(f"{type(exc).__name__}: {exc}")

    async def through_record_usage(session_factory: Any) -> None:
        for index in indexes:
            try:
                async with session_factory() as session, session.begin():
                    event_id = await record_usage(session, **event_args(writer, index))
                ids.append(event_id)  # only once committed
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    if mode == "outbox":
        async with Outbox(path) as outbox:
            await asyncio.gather(*(through_outbox(outbox) for _ in range(TASKS_PER_WRITER)))
    else:
        engine = create_outbox_engine(sqlite_url(path))
        try:

            def session_factory() -> AsyncSession:
                return AsyncSession(engine)

            await asyncio.gather(
                *(through_record_usage(session_factory) for _ in range(TASKS_PER_WRITER // 2))
            )
        finally:
            await engine.dispose()


def drainer_process(path: str, ready: Event, stop: Event, result: str) -> None:
    deleted: list[str] = []
    errors: list[str] = []
    rounds = 0
    try:
        rounds = asyncio.run(_drain(path, ready, stop, deleted, errors))
    except BaseException as exc:
        errors.append("".join(traceback.format_exception(exc)))
    Path(result).write_text(json.dumps({"deleted": deleted, "errors": errors, "rounds": rounds}))


def _drain_config(path: str, *, burst: bool) -> ShipperConfig:
    return ShipperConfig(
        database_url=sqlite_url(path),
        nats_servers=("nats://127.0.0.1:9",),  # never asked: the link is in memory
        exit_when_idle=burst,
        batch_size=300,
        max_in_flight=600,
        poll_interval=0.002,
        lease_ttl=30.0,
    ).validate()


async def _drain(
    path: str, ready: Event, stop: Event, deleted: list[str], errors: list[str]
) -> int:
    link = InMemoryLink()
    shipper = Shipper(_drain_config(path, burst=False), link=link)
    running = asyncio.create_task(shipper.run())
    await wait_until(
        lambda: link.connects or running.done(), DEADLINE, message="the shipper is draining"
    )
    ready.set()
    await asyncio.to_thread(stop.wait, DEADLINE)  # the writers are done
    shipper.stop()
    rounds = (await running).batches
    # What the writers wrote last: drained by a burst run, as after a deploy.
    rounds += (await Shipper(_drain_config(path, burst=True), link=link).run()).batches
    if link.sent_ids != link.stored_ids:
        errors.append(f"{len(link.sent_ids) - len(link.stored_ids)} events were sent twice")
    deleted.extend(link.stored_ids)
    return rounds


# -- the test ----------------------------------------------------------------------------


def _join(process: multiprocessing.process.BaseProcess, deadline: float) -> None:
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"{process.name} did not finish within the deadline")
    assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def test_writer_processes_and_a_drainer_share_one_file(outbox_path: Path, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, ready, stop = context.Event(), context.Event(), context.Event()
    deadline = time.monotonic() + DEADLINE
    drain_result = tmp_path / "drainer.json"
    drainer = context.Process(
        target=drainer_process,
        args=(str(outbox_path), ready, stop, str(drain_result)),
        name="drainer",
    )
    writers = [
        context.Process(
            target=writer_process,
            args=(
                str(outbox_path),
                w,
                "outbox" if w % 2 == 0 else "record_usage",
                start,
                str(tmp_path / f"writer-{w}.json"),
            ),
            name=f"writer-{w}",
        )
        for w in range(WRITERS)
    ]
    try:
        drainer.start()
        for process in writers:
            process.start()
        assert ready.wait(DEADLINE), "the drainer never started"
        start.set()  # all writers go at once, with the drainer already draining
        for process in writers:
            _join(process, deadline)
        stop.set()
        _join(drainer, deadline)
    finally:
        for process in [drainer, *writers]:
            if process.is_alive():
                process.kill()
                process.join()

    written: list[str] = []
    writer_errors: list[str] = []
    for w in range(WRITERS):
        result = json.loads((tmp_path / f"writer-{w}.json").read_text())
        written += result["ids"]
        writer_errors += result["errors"]
    drained = json.loads(drain_result.read_text())
    deleted: list[str] = drained["deleted"]
    with closing(sqlite3.connect(outbox_path)) as conn:
        remaining = [r[0] for r in conn.execute("SELECT event_id FROM usage_outbox")]

    assert not [e for e in writer_errors if "database is locked" in e]
    assert writer_errors == [], writer_errors[:5]
    assert drained["errors"] == [], drained["errors"][:5]
    assert len(written) == len(set(written)) == WRITERS * PER_WRITER
    assert len(deleted) == len(set(deleted)), "a row was deleted twice"
    assert not set(deleted) & set(remaining)
    assert set(deleted) | set(remaining) == set(written), "every event id accounted for"
    assert len(written) == len(deleted) + len(remaining)
    assert remaining == [], "the burst run drained the rest"
    assert drained["rounds"] > WRITERS, "the shipper drained alongside the writers"
