"""Scenario 8 of issue 5: the outbox's disk fills up.

The outbox file lives on a small filesystem of its own: a 4 MiB tmpfs (``mount -t tmpfs``,
which needs root). Where mounting is not allowed, the last resort is SQLite's own limit,
``PRAGMA max_page_count``, set on the writer's connections only (the test prints which).

The run: a service writes usage events together with a business row, one transaction
each (``record_usage`` in its session), while the shipper and billing run. Other data
fills the disk; the service keeps calling. Each failed call must

* fail with an error that says the disk is full (not an IntegrityError or a traceback
  from deep inside), raised to the caller at its commit,
* roll back the caller's business row with the usage event: no business row without its
  outbox row, no outbox row without its business row, ``PRAGMA integrity_check`` ok;

the group-commit API (:class:`outbox.Outbox`) reports it as ``OutboxStoreError``. The
shipper must neither exit nor dead-letter anything; once the space is freed, the same
writer (no restart) writes again and everything committed ships. Audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bench.faults.audit import WrittenLog
from bench.faults.harness import Workspace
from bench.faults.helpers import count_lines, stream_messages, stream_messages_async
from bench.faults.procs import Proc
from bench.faults.results import ScenarioResult, timed
from bench.faults.traffic import usage_call, written_record
from outbox import Outbox, create_outbox_engine, migrate, record_usage
from outbox.errors import OutboxStoreError
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until_sync

pytestmark = pytest.mark.faults

#: Set to ``max_page_count`` to run the fallback even where tmpfs can be mounted.
DISK_ENV = "USAGE_OUTBOX_FAULTS_DISK"
#: Larger than SQLite's automatic WAL checkpoint (1,000 pages, 4 MiB): on a smaller disk
#: the outbox's own WAL fills it before any checkpoint can run.
TMPFS_SIZE = "16m"
PROBE_DDL = "CREATE TABLE IF NOT EXISTS faults_probe (at REAL)"
BUSINESS_DDL = (
    "CREATE TABLE IF NOT EXISTS inference_requests (id INTEGER PRIMARY KEY, "
    "user_id TEXT NOT NULL, model TEXT NOT NULL, event_id TEXT NOT NULL)"
)
business = sa.table(
    "inference_requests",
    sa.column("user_id", sa.String),
    sa.column("model", sa.String),
    sa.column("event_id", sa.String),
)


class SmallDisk:
    """Where the outbox lives, and how it is filled and freed."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.kind = "tmpfs"
        self.page_limit: int | None = None  # max_page_count mode: the writer's limit
        self._ballast = root.parent / f"{root.name}-ballast"

    def mount(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.environ.get(DISK_ENV) == "max_page_count":
            self.kind = "max_page_count"
            return
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(self.dir)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            self.kind = "max_page_count"

    def unmount(self) -> None:
        if self.kind == "tmpfs":
            # lazy: a child that has not been reaped yet may still hold a file open
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)

    @property
    def outbox_path(self) -> Path:
        return self.dir / "outbox.db"

    @property
    def ballast(self) -> Path:
        return self.dir / "ballast" if self.kind == "tmpfs" else self._ballast

    def fill(self) -> int:
        """Take every free byte (tmpfs), or freeze the writer's file size (fallback)."""
        if self.kind == "max_page_count":
            with closing(sqlite3.connect(self.outbox_path)) as conn:
                self.page_limit = int(conn.execute("PRAGMA page_count").fetchone()[0])
            return 0
        written = 0
        chunk = b"\0" * 65536
        with self.ballast.open("ab", buffering=0) as ballast:
            try:
                while True:
                    written += ballast.write(chunk) or 0
            except OSError:  # ENOSPC: now it is full
                pass
            for size in (4096, 512, 1):  # the last bits too
                with contextlib.suppress(OSError):
                    while True:
                        written += ballast.write(b"\0" * size) or 0
        return written

    def cannot_write(self) -> bool:
        """Whether even a one-row write to the outbox file fails for lack of space now."""
        try:
            with closing(sqlite3.connect(self.outbox_path, timeout=30)) as conn, conn:
                conn.execute("INSERT INTO faults_probe (at) VALUES (?)", (time.time(),))
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                return True
            raise
        return False

    def free(self) -> None:
        if self.kind == "max_page_count":
            self.page_limit = None
        else:
            self.ballast.unlink()

    def limit_engine(self, engine: AsyncEngine) -> None:
        """In fallback mode, apply the page limit on every checkout of the writer's engine."""

        @event.listens_for(engine.sync_engine, "checkout")
        def _limit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            limit = self.page_limit if self.page_limit is not None else 1_073_741_823
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA max_page_count = {limit}")
            finally:
                cursor.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small")
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


@dataclass
class Service:
    """A model service: a business row and its usage event in one transaction."""

    engine: AsyncEngine
    log: WrittenLog
    rng: random.Random = field(default_factory=lambda: random.Random(8))
    committed: list[str] = field(default_factory=list)
    failed: list[tuple[str | None, BaseException]] = field(default_factory=list)
    calls: int = 0

    async def call(self) -> bool:
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        request = usage_call(self.rng, writer=8, index=self.calls)
        self.calls += 1
        event_id: str | None = None
        try:
            async with sessions() as session, session.begin():
                event_id = await record_usage(session, **request)
                await session.execute(
                    sa.insert(business).values(
                        user_id=request["user_id"], model=request["product_id"], event_id=event_id
                    )
                )
        except Exception as exc:
            self.failed.append((event_id, exc))
            return False
        self.committed.append(event_id)
        self.log.add(written_record(event_id, request))
        return True


def _consistency(path: Path) -> tuple[str, set[str], set[str]]:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        check = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        in_outbox = {r[0] for r in conn.execute("SELECT event_id FROM usage_outbox")}
        in_business = {r[0] for r in conn.execute("SELECT event_id FROM inference_requests")}
    return check, in_outbox, in_business


def _stream_count(url: str) -> int:
    return stream_messages([url])


def test_disk_full_fails_the_writers_transaction_cleanly_and_shipping_recovers(
    small_disk: SmallDisk, workspace: Workspace, nats_server: NatsServer
) -> None:
    ws, disk, url = workspace, small_disk, nats_server.url
    ws.outbox_path = disk.outbox_path  # the outbox on the small disk; logs stay off it
    with timed() as elapsed:
        ws.set_prices()
        billing = ws.billing(url)
        shipper = ws.shipper(url)
        log = WrittenLog(ws.written_dir / "writer-service.jsonl")
        try:
            result = asyncio.run(_run(ws, disk, log, url, shipper))
        finally:
            log.close()
        ws.wait_settled(len(ws.written()), 60)
        shipper_alive = shipper.running
        assert shipper.stop() == 0, shipper.log_text()[-3000:]
        assert billing.stop() == 0, billing.log_text()[-3000:]
        report = ws.audit(url)

    shipper_log = shipper.log_text()
    notes = [
        f"small disk: {disk.kind}"
        + (
            f" {TMPFS_SIZE}, filled with {result.ballast} bytes of ballast"
            if disk.kind == "tmpfs"
            else ""
        ),
        f"before the fill: {result.before} events committed and shipped, then "
        f"{result.committed_at_fill - result.before} more while the shipper was stopped",
        f"disk full: {result.full_calls} calls, {result.full_failed} failed "
        f"({result.first_error}; {result.at_commit} at the caller's commit, "
        f"{result.full_failed - result.at_commit} in record_usage's INSERT); "
        f"{result.full_committed} committed anyway",
        f"Outbox (group commit) while full: {result.outbox_error}",
        f"shipped while the disk was full: {result.shipped_while_full} of a backlog of "
        f"{result.backlog} in 1.5 s; shipper log: "
        f"{count_lines(shipper_log, 'disk is full')} disk-full lines; the shipper, started on "
        "the full disk, waited instead of exiting",
        f"after freeing: {result.after} events committed by the same writer; "
        f"everything shipped {result.recovered_in:.1f} s after the space came back",
    ]
    summary = ScenarioResult("8. disk full", report, faults=3, seconds=elapsed(), notes=notes)
    print(summary.summary())
    assert report.ok, summary.summary()
    assert shipper_alive, "the shipper exited during the disk-full episode"
    assert "Traceback" not in shipper_log
    assert report.dead == 0


@dataclass
class Outcome:
    before: int = 0
    ballast: int = 0
    full_calls: int = 0
    full_failed: int = 0
    full_committed: int = 0
    first_error: str = ""
    at_commit: int = 0
    outbox_error: str = ""
    committed_at_fill: int = 0
    backlog: int = 0
    shipped_while_full: int = 0
    after: int = 0
    recovered_in: float = 0.0


async def _run(ws: Workspace, disk: SmallDisk, log: WrittenLog, url: str, shipper: Proc) -> Outcome:
    outcome = Outcome()
    engine = create_outbox_engine(ws.outbox_url)
    if disk.kind == "max_page_count":
        disk.limit_engine(engine)
    try:
        await migrate.upgrade_engine(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql(BUSINESS_DDL)
            await conn.exec_driver_sql(PROBE_DDL)
        service = Service(engine, log)

        # Normal operation: written, shipped, billed.
        for _ in range(150):
            assert await service.call(), service.failed
        outcome.before = len(service.committed)
        await _wait(lambda: _stream_count(url) >= outcome.before, 30, "the first events ship")
        # The shipper is down (a deploy), so there is a committed backlog when the disk
        # fills up. (Not SIGSTOP: a shipper frozen inside its short transaction holds
        # SQLite's write lock, and every writer then waits out busy_timeout.)
        assert shipper.stop() == 0
        for _ in range(150):
            assert await service.call(), service.failed

        # The disk fills up (another program's data); the service goes on calling.
        outcome.ballast = disk.fill()
        outcome.committed_at_fill = len(service.committed)
        failures_in_a_row = 0
        while failures_in_a_row < 5 and outcome.full_calls < 2000:
            outcome.full_calls += 1
            failures_in_a_row = 0 if await service.call() else failures_in_a_row + 1
        outcome.full_failed = len(service.failed)
        outcome.full_committed = len(service.committed) - outcome.committed_at_fill
        assert outcome.full_failed >= 5, "the disk never filled up"
        for _, error in service.failed:
            assert isinstance(error, sa.exc.OperationalError), repr(error)
            assert "database or disk is full" in str(error), str(error)
        outcome.first_error = str(service.failed[0][1]).splitlines()[0]
        # where it surfaced: record_usage's INSERT (no event id yet) or the caller's commit
        outcome.at_commit = sum(event_id is not None for event_id, _ in service.failed)
        check, in_outbox, in_business = _consistency(disk.outbox_path)
        assert check == "ok"
        failed_ids = {event_id for event_id, _ in service.failed if event_id is not None}
        assert not failed_ids & in_outbox, "a failed transaction left its outbox row"
        assert not failed_ids & in_business, "a failed transaction left its business row"
        # every outbox row still there has its business row (shipped ones are gone)
        assert in_outbox <= in_business
        assert set(service.committed) == in_business

        # The group-commit API says the same thing in its own error type.
        async with Outbox(disk.outbox_path, run_migrations=False) as outbox:
            if disk.kind == "max_page_count":  # the limit is per connection: set it there too
                assert outbox._engine is not None
                disk.limit_engine(outbox._engine)
            with pytest.raises(OutboxStoreError, match="database or disk is full") as raised:
                call = usage_call(random.Random(1), writer=9, index=0)
                # big enough to need new pages whatever room the last ones have left
                await outbox.record(**{**call, "metadata": {"blob": "x" * 20_000}})
            outcome.outbox_error = str(raised.value).splitlines()[0]
        assert _consistency(disk.outbox_path)[1] <= set(service.committed)

        # The shipper comes back while the disk is still full: it must wait, not exit.
        # (Space comes and goes as SQLite checkpoints and rolls back: top the disk up
        # until not even a one-row write fits, so the start really meets a full disk.)
        if disk.kind == "tmpfs":
            for _ in range(50):
                if disk.cannot_write():
                    break
                outcome.ballast += disk.fill()
            assert disk.cannot_write(), "could not keep the disk full"
        shipper.start()
        if disk.kind == "tmpfs":
            await _wait(
                lambda: (
                    "cannot take the outbox lease" in shipper.log_since_start()
                    or "cannot open the outbox yet" in shipper.log_since_start()
                    or not shipper.running
                ),
                10,
                "the shipper meets the full disk",
            )
        # How far shipping gets while the disk stays full (measured, not required: every
        # SQLite write needs room in the WAL, the shipper's claim bookkeeping included).
        target = len(service.committed)
        outcome.backlog = target - outcome.before
        await asyncio.to_thread(_poll, lambda: _stream_count(url) >= target, 1.5)
        outcome.shipped_while_full = await stream_messages_async([url]) - outcome.before
        assert shipper.running, (
            f"a shipper started on a full disk exited: {shipper.log_since_start()[-3000:]}"
        )

        # Space comes back: the same engine writes again, the shipper catches up.
        disk.free()
        freed = time.monotonic()
        for _ in range(100):
            assert await service.call(), service.failed[-1]
        outcome.after = 100
        total = len(service.committed)
        await _wait(lambda: _stream_count(url) >= total, 60, "everything committed ships")
        outcome.recovered_in = time.monotonic() - freed
        check, in_outbox, in_business = _consistency(disk.outbox_path)
        assert check == "ok" and set(service.committed) == in_business
    finally:
        await engine.dispose()
    return outcome


async def _wait(predicate: Any, within: float, what: str) -> None:
    # The predicates block (sqlite3, a NATS round trip): poll them off the event loop.
    await asyncio.to_thread(wait_until_sync, predicate, within, message=what, interval=0.05)


def _poll(predicate: Any, seconds: float) -> bool:
    """Whether ``predicate`` became true within ``seconds`` (no failure if not)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
