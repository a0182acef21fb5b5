"""Process helpers shared by the fault scenarios (``bench/faults``, run by ``tests/faults``
and ``bench/soak.py``).

Everything here drives the real parts as real processes: writer processes that record
events through the outbox's own write API, the shipper (``python -m shipper run``) and the
billing consumer (``python -m billing run``), each with its output in a log file, each
SIGKILLable and restartable. Nothing is mocked.

The API, small on purpose::

    ws = Workspace(tmp_path)                  # outbox.db, billing.db, logs/, written/
    ws.set_prices()                           # PRICES into billing, before any event arrives
    shipper = ws.shipper(nats.url, lease_ttl=1.0)   # a Proc; SHIPPER_* settings as keywords
    billing = ws.billing(nats.url, ack_wait=2.0)    # a Proc; BILLING_* settings as keywords
    writers = ws.writers(4, events=10_000, rate=500)  # WriterSpec keywords; started
    ...faults: shipper.kill(); shipper.start(); crash_loop(...)...
    results = writers.wait(60)                # one WriterResult per process
    ws.wait_settled(nats.url, timeout=60)     # outbox empty, everything written billed
    shipper.stop(); billing.stop()
    report = ws.audit(nats.url)               # bench.faults.audit.run_audit on all of it

* :class:`Proc`: one child process; ``start``/``kill`` (SIGKILL, by pid)/``stop``
  (SIGTERM, then SIGKILL after a deadline)/``restart``; counts its starts and kills; its
  log is appended across restarts and :meth:`Proc.log_since_start` reads the current run.
* :func:`crash_loop`: SIGKILL a process at random moments N times, restarting it each time.
* Writers: ``python -m bench.faults.harness writer ...`` (:func:`writer_main`), through
  :class:`outbox.Outbox` (group commit) or :func:`outbox.record_usage` inside a session
  transaction that also inserts a business row. Each committed event is appended to the
  writer's :class:`~bench.faults.audit.WrittenLog`; each failed call is counted, never
  retried, so an error reaching a writer is visible in :class:`WriterResult`.

Every process is killed (by its own pid) when the workspace closes, whatever the test did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.faults.audit import AuditReport, Written, WrittenLog, load_written, run_audit
from outbox.stream_spec import DEFAULT_STREAM
from usage_demo.processes import CliProcess, child_env
from usage_demo.waiting import wait_until_sync

REPO = Path(__file__).resolve().parents[2]

#: Unit prices loaded into billing, per (product_id, unit_type). Product names with a dot
#: or a slash exercise the subject encoding; one product has no price at all.
PRICES: dict[tuple[str, str], str] = {
    ("gpt-4", "token"): "0.00003",
    ("gpt-4.1", "token"): "0.000008",
    ("meta-llama/Llama-3.1-8B", "token"): "0.0000002",
    ("text-embedding-3-small", "token"): "0.00000002",
    ("flux-schnell", "request"): "0.003",
}
#: Billing keeps its events as unpriced (recorded, not charged); the audit expects that.
UNPRICED_PRODUCT = "experimental-omni-1"

#: Settings every shipper here runs with unless a scenario overrides them (SHIPPER_*
#: option names of ``python -m shipper run``, as keywords). Short timeouts so that a
#: SIGKILLed shipper's successor takes over within about a second.
SHIPPER_DEFAULTS: dict[str, object] = {
    "lease_ttl": 1.0,
    "backoff_cap": 0.5,
    "poll_interval": 0.05,
    "publish_timeout": 2.0,
    "retry_base": 0.2,
    "retry_cap": 2.0,
    "shutdown_timeout": 5.0,
    "log_level": "INFO",
}
BILLING_DEFAULTS: dict[str, object] = {
    "ack_wait": 3.0,
    "fetch_timeout": 0.5,
    "retry_delay": 0.2,
    "log_level": "INFO",
}

# -- child processes ----------------------------------------------------------------------


def clean_env(**values: str) -> dict[str, str]:
    """The environment of a child: no inherited NATS/shipper/billing settings."""
    return child_env(values, pythonpath=REPO)


class Proc:
    """One child process (a :class:`CliProcess`) with its output appended to ``log_path``;
    restartable, counting its starts and kills."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.starts = 0
        self.kills = 0
        self._child = CliProcess(argv, env=env, log_path=log_path, cwd=REPO, name=name)
        self._started = False
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._started else None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def start(self) -> Self:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._child.start()
        self._started = True
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind runs in the child), then reap it."""
        if self.running:
            self._child.kill()
            self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it has not exited within ``timeout``."""
        return self._child.stop(timeout).returncode if self._started else None

    def restart(self) -> Self:
        self.kill()
        return self.start()

    def wait(self, timeout: float) -> int:
        assert self._started, f"{self.name} never started"
        return self._child.wait(timeout)

    def log_text(self) -> str:
        return self._child.output()

    def log_since_start(self) -> str:
        """The log of the current run only."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.pid} {state} starts={self.starts} kills={self.kills}>"


def _settings_env(prefix: str, settings: Mapping[str, object]) -> dict[str, str]:
    return {f"{prefix}{key.upper()}": str(value) for key, value in settings.items()}


def crash_loop(
    proc: Proc,
    *,
    kills: int,
    rng: random.Random,
    ready: Callable[[], bool],
    delay: tuple[float, float],
    keep_going: Callable[[], bool] = lambda: False,
    early: float = 0.2,
    ready_timeout: float = 30.0,
) -> int:
    """SIGKILL ``proc`` at random moments and restart it at once; return the kills made.

    Goes on until ``kills`` kills are done and ``keep_going()`` is false (e.g. "writers are
    still writing"). The moment of each kill: with probability ``early``, anywhere in the
    first second after the restart (during start-up, migration, lease wait); otherwise
    once ``ready()`` says the new process is working, after a random ``delay`` (uniform,
    seconds). The random sleeps are the fault schedule, not synchronisation. Returns once
    the last restart is ready too.
    """
    made = 0
    while made < kills or keep_going():
        if rng.random() < early:
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            wait_until_sync(
                lambda: ready() or not proc.running,
                ready_timeout,
                message=f"{proc.name} ready after restart {made}",
                interval=0.05,
            )
            time.sleep(rng.uniform(*delay))
        if not proc.running:
            tail = proc.log_since_start()[-3000:]
            raise AssertionError(f"{proc.name} exited on its own:\n{tail}")
        proc.kill()
        made += 1
        proc.start()
    # The last restart too must come up working (and a SIGTERM sent before it has its
    # signal handlers installed would end it with -15, not a clean stop).
    wait_until_sync(
        lambda: ready() or not proc.running,
        ready_timeout,
        message=f"{proc.name} ready at the end",
        interval=0.05,
    )
    if not proc.running:
        raise AssertionError(f"{proc.name} exited on its own:\n{proc.log_since_start()[-3000:]}")
    return made


# -- writers ------------------------------------------------------------------------------

PRODUCTS: tuple[tuple[str, str], ...] = (
    ("gpt-4", "openai"),
    ("gpt-4.1", "openai"),
    ("meta-llama/Llama-3.1-8B", "meta"),
    ("text-embedding-3-small", "openai"),
    ("flux-schnell", "bfl"),
    (UNPRICED_PRODUCT, "lab"),
)


def usage_call(rng: random.Random, writer: int, index: int) -> dict[str, Any]:
    """The arguments of one recorded call: a mix of products, users and amounts."""
    product, provider = rng.choice(PRODUCTS)
    call: dict[str, Any] = {
        "user_id": f"user-{rng.randrange(40):02d}",
        "product_id": product,
        "provider": provider,
        "operation": "chat",
        "service_type": "text",
        "metadata": {"writer": writer, "n": index},
    }
    if product == "flux-schnell":
        call.update(service_type="image", operation="generate")
        call["input_units"] = rng.choice((1, 2, 4, 0.5, 2.25))
    elif product == "text-embedding-3-small":
        call.update(operation="embed", input_tokens=rng.randrange(1, 8000))
    else:
        call.update(input_tokens=rng.randrange(0, 4000), output_tokens=rng.randrange(1, 2000))
    return call


def written_record(event_id: str, call: Mapping[str, Any]) -> Written:
    """What the writer meant to record, computed from its own arguments (not the payload)."""
    tokens = [call[k] for k in ("input_tokens", "output_tokens") if k in call]
    if tokens:
        amount, unit = str(sum(tokens)), "token"
    else:
        amount, unit = repr(float(call["input_units"])), "request"
    return Written(event_id, call["user_id"], call["product_id"], unit, amount)


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


# -- the workspace ------------------------------------------------------------------------


class Workspace:
    """Files and processes of one scenario run under ``root``; closing kills what runs."""

    def __init__(self, root: Path, *, billing_url: str | None = None) -> None:
        """``billing_url``: billing's database (default: an SQLite file under ``root``)."""
        self.root = Path(root)
        self._billing_url = billing_url
        self.root.mkdir(parents=True, exist_ok=True)
        self.outbox_path = self.root / "outbox.db"
        self.billing_path = self.root / "billing.db"
        self.logs = self.root / "logs"
        self.written_dir = self.root / "written"
        self.logs.mkdir(exist_ok=True)
        self.written_dir.mkdir(exist_ok=True)
        self.procs: list[Proc] = []
        self._writer_ids = itertools.count()

    @property
    def outbox_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.outbox_path}"

    @property
    def billing_url(self) -> str:
        return self._billing_url or f"sqlite+aiosqlite:///{self.billing_path}"

    # -- processes -----------------------------------------------------------------------

    def proc(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Proc:
        made = Proc(name, argv, env, self.logs / f"{name}.log")
        self.procs.append(made)
        return made

    def shipper(self, nats_url: str, *, start: bool = True, **settings: object) -> Proc:
        """``python -m shipper run`` on this outbox; keywords are ``SHIPPER_*`` settings
        (``lease_ttl=1.0`` -> ``SHIPPER_LEASE_TTL=1.0``) over :data:`SHIPPER_DEFAULTS`."""
        env = clean_env(NATS_URL=nats_url, USAGE_OUTBOX_URL=str(self.outbox_path))
        env.update(_settings_env("SHIPPER_", {**SHIPPER_DEFAULTS, **settings}))
        proc = self.proc("shipper", [sys.executable, "-m", "shipper", "run"], env)
        return proc.start() if start else proc

    def billing(
        self, nats_url: str, *, start: bool = True, name: str = "billing", **settings: object
    ) -> Proc:
        """``python -m billing run`` on this billing database; keywords are ``BILLING_*``
        settings over :data:`BILLING_DEFAULTS`. Several consumers need several ``name``s."""
        env = clean_env(
            NATS_URL=nats_url, BILLING_DATABASE_URL=self.billing_url, USAGE_CREATE_STREAM="false"
        )
        env.update(_settings_env("BILLING_", {**BILLING_DEFAULTS, **settings}))
        proc = self.proc(name, [sys.executable, "-m", "billing", "run"], env)
        return proc.start() if start else proc

    def writers(self, count: int, **spec: Any) -> Writers:
        """Start ``count`` writer processes, each with ``WriterSpec(**spec)`` (its own seed).
        ``api`` may be a list, one entry per process, cycled."""
        apis = spec.pop("api", "outbox")
        api_cycle = itertools.cycle([apis] if isinstance(apis, str) else list(apis))
        procs, results = [], []
        for _ in range(count):
            number = next(self._writer_ids)
            writer_spec = WriterSpec(api=next(api_cycle), seed=number, **spec)
            result = self.written_dir / f"writer-{number}.result.json"
            argv = [
                sys.executable,
                "-m",
                "bench.faults.harness",
                "writer",
                "--outbox",
                str(self.outbox_path),
                "--written",
                str(self.written_dir / f"writer-{number}.jsonl"),
                "--result",
                str(result),
                "--writer",
                str(number),
                "--spec",
                json.dumps(asdict(writer_spec)),
            ]
            procs.append(self.proc(f"writer-{number}", argv, clean_env()).start())
            results.append(result)
        return Writers(procs, results)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------

    def set_prices(self, prices: Mapping[tuple[str, str], str] = PRICES) -> None:
        """Load the price table into billing (migrating the database first)."""
        from billing.database import BillingDatabase

        async def load() -> None:
            async with BillingDatabase(self.billing_url) as db:
                await db.set_prices(dict(prices))

        asyncio.run(load())

    def written(self) -> dict[str, Written]:
        return load_written(sorted(self.written_dir.glob("writer-*.jsonl")))

    def _count(self, path: Path, sql: str) -> int:
        if not path.exists():
            return 0
        try:
            with closing(sqlite3.connect(path, timeout=30)) as conn:
                return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise

    def pending(self) -> int:
        return self._count(self.outbox_path, "SELECT count(*) FROM usage_outbox")

    def billed(self) -> int:
        if self._billing_url is None:
            return self._count(self.billing_path, "SELECT count(*) FROM billing_records")
        from billing.engines import create_billing_sync_engine

        engine = create_billing_sync_engine(self._billing_url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.exec_driver_sql("SELECT count(*) FROM billing_records").scalar_one()
                )
        finally:
            engine.dispose()

    def wait_settled(self, expected: int, timeout: float) -> None:
        """Wait until the outbox is empty and billing recorded ``expected`` events."""
        wait_until_sync(
            lambda: self.pending() == 0 and self.billed() >= expected,
            timeout,
            message=f"outbox empty and {expected} events billed",
            interval=0.2,
            explain=lambda: f"outbox rows {self.pending()}, billed {self.billed()}",
        )

    def audit(
        self,
        nats_url: str | list[str],
        *,
        prices: Mapping[tuple[str, str], str] = PRICES,
        **kw: Any,
    ) -> AuditReport:
        """:func:`bench.faults.audit.run_audit` over everything the writers logged."""
        return asyncio.run(
            run_audit(
                written=self.written(),
                nats_url=nats_url,
                outbox_url=self.outbox_url,
                billing_url=self.billing_url,
                prices=prices,
                **kw,
            )
        )


# -- reading state ------------------------------------------------------------------------


def consumer_deliveries(
    nats_url: str, stream: str = DEFAULT_STREAM, durable: str = "billing"
) -> tuple[int, int]:
    """(deliveries made, last stream sequence delivered) of billing's durable consumer:
    the difference is the number of redeliveries."""
    import nats

    async def read() -> tuple[int, int]:
        client = await nats.connect(nats_url, connect_timeout=2)
        try:
            info = await client.jetstream().consumer_info(stream, durable)
            return int(info.delivered.consumer_seq or 0), int(info.delivered.stream_seq or 0)
        finally:
            await client.close()

    return asyncio.run(read())


def count_lines(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def in_flight_recoveries(shipper_log: str) -> tuple[int, int]:
    """(restarts that found rows in flight, rows counted) from a shipper's log."""
    found = [int(n) for n in re.findall(r"stopped with (\d+) rows in flight", shipper_log)]
    return len(found), sum(found)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, inclusive method."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# -- scenario results ---------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What a scenario did and found; printed by the tests and by the soak script.

    ``failures`` are the scenario's own checks beyond the audit (errors that reached a
    writer, a latency bound, a fault that did not take effect); ``ok`` needs both clean.
    """

    name: str
    report: AuditReport
    faults: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, condition: bool, failure: str) -> None:
        if not condition:
            self.failures.append(failure)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.failures

    def summary(self) -> str:
        lines = [f"== {self.name}: {self.faults} faults injected, {self.seconds:.1f} s"]
        lines += [f"   {note}" for note in self.notes]
        lines += [f"   {line}" for line in self.report.summary().splitlines()]
        lines += [f"   FAILED CHECK: {failure}" for failure in self.failures]
        lines.append(f"   verdict: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


#: What the shipper logs on connecting, per publish path (shipper.link).
PUBLISH_MODE_LINES = {
    True: "publishing in fast-ingest batches",
    False: "publishing with one PubAck per message",
}


def check_publish_mode(result: ScenarioResult, shipper_log: str, batch_publish: bool) -> None:
    """The scenario ran on the publish path it was meant to (and only on that one)."""
    result.check(
        PUBLISH_MODE_LINES[batch_publish] in shipper_log
        and PUBLISH_MODE_LINES[not batch_publish] not in shipper_log,
        f"the shipper did not publish only as asked (batch_publish={batch_publish})",
    )
    result.notes.append(f"publish path: {PUBLISH_MODE_LINES[batch_publish]}")


def check_writers(result: ScenarioResult, results: Sequence[WriterResult]) -> None:
    """No error of any kind reached a writer."""
    errors = sum(r.errors for r in results)
    first = [e for r in results for e in r.first_errors][:3]
    result.check(errors == 0, f"{errors} errors reached the writers, e.g. {first}")


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started


# -- the writer process -------------------------------------------------------------------


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
    """``python -m bench.faults.harness writer``: write, log each commit, report (JSON)."""
    parser = argparse.ArgumentParser(prog="bench.faults.harness")
    parser.add_argument("command", choices=["writer"])
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
