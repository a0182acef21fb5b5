"""The workspace of a fault scenario (``bench/faults``, run by ``tests/faults`` and
``bench/soak.py``): its files and the processes it starts on them.

Everything here drives the real parts as real processes: writer processes that record
events through the outbox's own write API (:mod:`bench.faults.writer`), the shipper
(``python -m shipper run``) and the billing consumer (``python -m billing run``), each with
its output in a log file, each SIGKILLable and restartable (:mod:`bench.faults.procs`).
Nothing is mocked.

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

:func:`staged` is the set-up most scenarios share: a workspace, a nats-server of its own
and the prices loaded. Every process is killed (by its own pid) when the workspace closes,
whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.faults.audit import AuditReport, Written, load_written, run_audit
from bench.faults.procs import Proc, clean_env, settings_env
from bench.faults.traffic import PRICES
from bench.faults.writer import Writers, WriterSpec
from usage_demo.natsserver import NatsServer
from usage_demo.waiting import wait_until_sync

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

    def shipper(
        self,
        nats_url: str,
        *,
        start: bool = True,
        name: str = "shipper",
        flags: Sequence[str] = (),
        **settings: object,
    ) -> Proc:
        """``python -m shipper run`` on this outbox; keywords are ``SHIPPER_*`` settings
        (``lease_ttl=1.0`` -> ``SHIPPER_LEASE_TTL=1.0``) over :data:`SHIPPER_DEFAULTS`;
        ``flags``: command-line options no setting covers (``--replicas``,
        ``--consul-host``, ``--duplicate-window``...)."""
        env = clean_env(NATS_URL=nats_url, USAGE_OUTBOX_URL=str(self.outbox_path))
        env.update(settings_env("SHIPPER_", {**SHIPPER_DEFAULTS, **settings}))
        proc = self.proc(name, [sys.executable, "-m", "shipper", "run", *flags], env)
        return proc.start() if start else proc

    def billing(
        self, nats_url: str, *, start: bool = True, name: str = "billing", **settings: object
    ) -> Proc:
        """``python -m billing run`` on this billing database; keywords are ``BILLING_*``
        settings over :data:`BILLING_DEFAULTS`. Several consumers need several ``name``s."""
        env = clean_env(
            NATS_URL=nats_url, BILLING_DATABASE_URL=self.billing_url, USAGE_CREATE_STREAM="false"
        )
        env.update(settings_env("BILLING_", {**BILLING_DEFAULTS, **settings}))
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
                "bench.faults.writer",
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


@contextlib.contextmanager
def staged(
    root: Path, *, binary: str | None = None, billing_url: str | None = None
) -> Iterator[tuple[Workspace, NatsServer]]:
    """A :class:`Workspace` under ``root`` beside a nats-server of its own
    (``root / "nats"``), billing's prices loaded. On the way out the server stops, then
    every process of the workspace is killed."""
    with Workspace(root, billing_url=billing_url) as ws:
        nats = NatsServer(root / "nats", binary=binary).start()
        try:
            ws.set_prices()
            yield ws, nats
        finally:
            nats.stop()
