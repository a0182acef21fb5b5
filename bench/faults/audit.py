"""The one audit every fault scenario ends with.

Written once, reused by every scenario (tests and the soak script):

* the set of ``event_id``s the writers wrote == the set in the stream == the set in
  ``billing_records``;
* no ``event_id`` twice in the stream (beyond deliberate replays) nor in billing;
* the sum of ``wallet_transactions`` equals the priced sum of the written events,
  computed here from what the writers wrote (not from what billing stored);
* the ledger's own invariants hold (``billing`` audit);
* the outbox holds nothing pending, and nothing dead that was not meant to be.

Writers record what they wrote as JSON lines (:class:`WrittenLog`), one file per writer
process, appended only after the write committed; the audit reads them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from billing.database import BillingDatabase
from billing.pricing import compute_charge, quantize_usage
from outbox.schema import DEAD, PENDING, outbox_table
from outbox.sqlite import create_outbox_engine
from outbox.stream_spec import DEFAULT_STREAM


@dataclass(frozen=True, slots=True)
class Written:
    event_id: str
    user_id: str
    product_id: str
    unit_type: str
    usage_amount: str  # as the contract computed it, a decimal string

    @classmethod
    def from_payload(cls, payload: bytes) -> Written:
        document = json.loads(payload)
        return cls(
            event_id=document["event_id"],
            user_id=document["user_id"],
            product_id=document["product_id"],
            unit_type=document["unit_type"],
            usage_amount=str(document["usage_amount"]),
        )


class WrittenLog:
    """Append-only JSON lines of committed writes; flushed per line so a SIGKILLed writer
    leaves every committed line it wrote (a line after its commit may be missing: such an
    event is in the outbox but not in the log, which the audit reports as 'unexpected')."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def add(self, written: Written) -> None:
        self._file.write(json.dumps(dataclasses.asdict(written)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def load_written(paths: Iterable[Path]) -> dict[str, Written]:
    written: dict[str, Written] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = Written(**json.loads(line))
                written[item.event_id] = item
    return written


@dataclass
class AuditReport:
    written: int
    stream_messages: int
    stream_distinct: int
    billed_records: int
    pending: int
    dead: int
    charged: Decimal
    expected_charged: Decimal
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"audit: written={self.written} stream={self.stream_messages} "
            f"(distinct {self.stream_distinct}) billed_records={self.billed_records} "
            f"outbox pending={self.pending} dead={self.dead} "
            f"charged={self.charged} expected={self.expected_charged}",
        ]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


async def stream_event_ids(nats_url: str | list[str], stream: str = DEFAULT_STREAM) -> Counter[str]:
    """How many messages in ``stream`` carry each ``event_id`` (read from the payloads)."""
    client = await nats.connect(servers=nats_url if isinstance(nats_url, list) else [nats_url])
    counts: Counter[str] = Counter()
    try:
        js = client.jetstream(timeout=10)
        info = await js.stream_info(stream)
        total = info.state.messages
        if total == 0:
            return counts
        subscription = await js.pull_subscribe(
            "billing.usage.recorded.>",
            durable=None,
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        seen = 0
        while seen < total:
            try:
                batch = await subscription.fetch(min(1000, total - seen), timeout=5)
            except TimeoutError:
                break
            for message in batch:
                counts[json.loads(message.data).get("event_id", "?")] += 1
            seen += len(batch)
        await subscription.unsubscribe()
    finally:
        await client.close()
    return counts


async def outbox_counts(outbox_url: str) -> tuple[int, set[str]]:
    """Pending rows, and the event ids of dead rows."""
    engine = create_outbox_engine(outbox_url)
    try:
        async with engine.connect() as conn:
            pending = await conn.scalar(
                sa.select(sa.func.count()).where(outbox_table.c.state == PENDING)
            )
            dead = set(
                (
                    await conn.execute(
                        sa.select(outbox_table.c.event_id).where(outbox_table.c.state == DEAD)
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    return int(pending or 0), dead


def expected_charge(written: Iterable[Written], prices: Mapping[tuple[str, str], str]) -> Decimal:
    total = Decimal(0)
    for item in written:
        price = prices.get((item.product_id, item.unit_type))
        if price is not None:
            total += compute_charge(quantize_usage(Decimal(item.usage_amount)), Decimal(price))
    return total


async def run_audit(
    *,
    written: Mapping[str, Written],
    nats_url: str | list[str],
    outbox_url: str,
    billing_url: str,
    prices: Mapping[tuple[str, str], str],
    stream: str = DEFAULT_STREAM,
    expect_dead: set[str] | frozenset[str] = frozenset(),
    replays: int = 0,
) -> AuditReport:
    """Check every guarantee; ``expect_dead`` are event ids meant to end dead (bad rows),
    ``replays`` the number of deliberate re-publications with fresh message ids."""
    in_stream = await stream_event_ids(nats_url, stream)
    pending, dead = await outbox_counts(outbox_url)
    async with BillingDatabase(billing_url, run_migrations=False) as db:
        states = await db.event_states()
        report = await db.report()
        ledger = await db.audit()
    shipped = set(written) - set(expect_dead)
    expected = expected_charge((written[e] for e in shipped), prices)
    result = AuditReport(
        written=len(written),
        stream_messages=sum(in_stream.values()),
        stream_distinct=len(in_stream),
        billed_records=len(states),
        pending=pending,
        dead=len(dead),
        charged=report.total_charged,
        expected_charged=expected,
    )
    problems = result.problems
    missing_stream = shipped - set(in_stream)
    extra_stream = set(in_stream) - shipped
    if missing_stream:
        problems.append(
            f"{len(missing_stream)} written events not in the stream, "
            f"e.g. {sorted(missing_stream)[:3]}"
        )
    if extra_stream:
        problems.append(
            f"{len(extra_stream)} stream events nobody wrote (or meant dead), "
            f"e.g. {sorted(extra_stream)[:3]}"
        )
    repeated = sum(n - 1 for n in in_stream.values() if n > 1)
    if repeated > replays:
        problems.append(f"{repeated} duplicate messages in the stream (replays: {replays})")
    missing_billing = shipped - set(states)
    extra_billing = set(states) - shipped
    if missing_billing:
        problems.append(
            f"{len(missing_billing)} written events not billed, e.g. {sorted(missing_billing)[:3]}"
        )
    if extra_billing:
        problems.append(f"{len(extra_billing)} billed events nobody wrote")
    if report.total_charged != expected:
        problems.append(f"charged {report.total_charged} != priced sum of writes {expected}")
    if -report.total_balance != report.total_charged:
        problems.append(f"wallet balances {report.total_balance} != -charged")
    problems.extend(f"ledger: {p}" for p in ledger.problems)
    if pending:
        problems.append(f"{pending} rows still pending in the outbox")
    if dead != set(expect_dead):
        problems.append(
            f"dead rows {len(dead)} != expected {len(expect_dead)}: "
            f"unexpected {sorted(dead - set(expect_dead))[:3]}, "
            f"missing {sorted(set(expect_dead) - dead)[:3]}"
        )
    return result


def audit_sync(**kwargs: Any) -> AuditReport:
    return asyncio.run(run_audit(**kwargs))
