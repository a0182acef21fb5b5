"""Several writer processes and a draining process on one SQLite outbox file.

4 writer processes x 2,000 events: two through the ``Outbox`` object (group commit), two
through ``record_usage`` in their own short transactions on their own engine, several at
once. Meanwhile another process claims and deletes rows the way the shipper does
(``store.claim`` + ``store.delete_sent`` in one transaction). At the end every event id
is accounted for exactly once (deleted or still in the table), and no writer saw an error
of any kind, ``database is locked`` included.
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

from outbox import Outbox, record_usage, store
from outbox.sqlite import create_outbox_engine, sqlite_url

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


async def _drain(
    path: str, ready: Event, stop: Event, deleted: list[str], errors: list[str]
) -> int:
    engine = create_outbox_engine(sqlite_url(path))
    rounds = 0
    try:
        ready.set()
        while True:
            last_round = stop.is_set()  # writers are done: one more pass, then stop
            rows: list[store.OutboxRow] = []
            try:
                async with engine.begin() as conn:  # claim and delete in one transaction
                    claim = await conn.run_sync(
                        store.claim, now=time.time(), limit=300, max_attempts=5
                    )
                    rows = list(claim.rows)
                    removed = await conn.run_sync(store.delete_sent, [r.id for r in rows])
                    if removed != len(rows):
                        raise AssertionError(f"deleted {removed} of {len(rows)} claimed rows")
                deleted.extend(r.event_id for r in rows)  # only once committed
                rounds += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            if last_round:
                return rounds
            if not rows:
                await asyncio.sleep(0.002)  # the shipper's poll interval, not a rendezvous
    finally:
        await engine.dispose()


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
    assert deleted, "the drainer ran alongside the writers"
